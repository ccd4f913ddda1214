"""kalib's exceptions. Every mistake a user can make (a bad setting, a missing file or data source, a damaged
or foreign checkpoint, a busy run directory, a full disk) raises a subclass of :class:`KalibError` whose
message names the problem and the fix; the command line prints that one line and exits with code 2.
Anything else that escapes (a ``ValueError`` from inside torch or numpy, say) is a bug in kalib, and the
command line shows it as one.

Where a standard exception says the same thing, a kalib class also derives from it (``ConfigError`` is a
``ValueError``, ``MissingFileError`` a ``FileNotFoundError``), so ``except ValueError`` around a kalib call
still catches a bad setting.
"""

from __future__ import annotations


class KalibError(Exception):
    """A problem with what kalib was asked to do or given; the message says what to do instead."""


# ------------------------------------------------------------------------------------------ settings

class ConfigError(KalibError, ValueError):
    """A setting that cannot run: a preset field, a schedule, a ``--set`` value, an option's value."""


class UnknownTaskError(ConfigError):
    """A task (label) name that no teacher knows, or an empty task set."""


class DeviceError(ConfigError):
    """An unknown device name, or a device that this machine does not have."""


class GenericStageError(ConfigError):
    """A preset asks for a generic stage its data cannot provide."""


class UnknownParameterError(ConfigError):
    """A notebook was given a parameter it does not take (a misspelt papermill ``-p``)."""


class CommandError(KalibError):
    """A command cannot run as asked (the message says why and what to do)."""


# -------------------------------------------------------------------------------------- files, data

class MissingFileError(KalibError, FileNotFoundError):
    """A file or directory kalib needs is not there (teachers not yet pretrained, a run not yet made)."""


class ExistingFileError(KalibError, FileExistsError):
    """A file that would be overwritten belongs to something else (other labels, another initialisation)."""


class MissingSourceError(KalibError):
    """A data source (Fashion-MNIST, MNIST digits, a VOC/COCO tree, ImageNet weights) is missing."""


class DataRootError(MissingSourceError):
    """``--data-root`` does not hold the dataset in the layout kalib reads."""


class MissingWeightsError(MissingSourceError):
    """ImageNet weights were not found locally and downloading was not allowed."""


class CheckpointError(KalibError):
    """A checkpoint is missing, corrupt, truncated, foreign or incompatible."""


class TeacherFileError(CheckpointError):
    """A teacher a user brings (``--teacher ARCH:WEIGHTS:LABELS``) cannot be used: its weights are not a state
    dict of that architecture, or its labels file does not name its head's outputs."""


class ImageFolderError(KalibError):
    """A folder of images (``--pool``, ``--eval``) holds no readable image, or labels that do not match its
    files (``--eval-labels``)."""


class ConfigMismatchError(CheckpointError):
    """Saved training state belongs to another configuration; resuming from it would mix two runs. The
    message offers ``--restart``."""


class StorageError(KalibError):
    """A file could not be written: no space left, no permission, a read-only file system."""


class ResourceError(KalibError):
    """What was asked for would not fit: a cache larger than the free disk space, an array larger than the
    available memory (:mod:`kalib.resources`). The message gives the size and what to change."""


class LockedError(KalibError):
    """Another process is working in the same run directory."""


# ------------------------------------------------------------------------------------------ training

class NonFiniteLossError(KalibError, FloatingPointError):
    """The loss became NaN or infinite; training stops instead of writing broken weights."""


class NotebookError(KalibError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""
