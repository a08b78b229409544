"""vfs-agent: discover, mount and keep mounted the virtio-fs shares of a guest."""

__version__ = "0.1.0"
