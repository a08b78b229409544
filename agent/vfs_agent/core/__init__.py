"""The pure core: data types and the rules over them (plan, renderers, escaping). No I/O:
nothing here imports `vfs_agent.system`, `vfs_agent.systemd`, `vfs_agent.execute` or
`vfs_agent.commands`."""
