"""The parts of ``edgefleet flash`` (``controller.images.flash`` runs them in order):
``image`` verifies the image and reads from the verified copy, ``device_files`` prepares
the device's own files, ``controller_api`` makes the controller calls, ``writing`` writes
the target."""
