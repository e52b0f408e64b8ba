"""The refusals of ``edgefleet flash``, each saying what and where."""


class FlashError(RuntimeError):
    """Flashing was refused or failed; the text says what and where."""


class TargetError(FlashError):
    """The target (a folder or a ``.tar`` file) cannot be written as asked."""


class ControllerError(FlashError):
    """The controller could not be reached or refused a step."""


__all__ = ["ControllerError", "FlashError", "TargetError"]
