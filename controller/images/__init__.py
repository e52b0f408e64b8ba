"""Firmware images: recipes per device class, the reproducible signed image build, the
image key and image verification (``docs/images.md``)."""
