"""The edges: files, system calls, processes and devices, all relative to a SysRoot."""
