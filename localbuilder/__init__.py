"""localbuilder: build Azure VM Image Builder templates locally, on QEMU or libvirt guests."""

__version__ = "0.1.0"
