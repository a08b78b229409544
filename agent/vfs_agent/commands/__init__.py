"""The `vfs-agent` command and the operations behind it."""
