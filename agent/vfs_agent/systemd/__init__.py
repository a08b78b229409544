"""systemd and udev integration: the generator, unit handling, sd_notify, the udev helper
and installing the system files."""
