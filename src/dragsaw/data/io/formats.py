"""The volume formats dragsaw reads, and the one rule that says which format a path is.

=============  ==========================  ===============  ==========  ===================================
format         path                        MONAI reader     module      install
=============  ==========================  ===============  ==========  ===================================
NIfTI          ``.nii``, ``.nii.gz``       NibabelReader    nibabel     always installed
NRRD           ``.nrrd``, ``.nhdr``        NrrdReader       nrrd        ``pip install 'dragsaw[formats]'``
DICOM series   a folder of ``.dcm`` files  PydicomReader    pydicom     ``pip install 'dragsaw[formats]'``
MetaImage      ``.mha``, ``.mhd``          ITKReader        itk         ``pip install 'dragsaw[itk]'``
=============  ==========================  ===============  ==========  ===================================

Suffixes are compared in lower case. A DICOM series is given as its folder: every visible file in it is read as a
slice (as MONAI's ``PydicomReader`` does), and the folder must hold at least one ``.dcm`` file to be recognised.
Only the file name (or, for a folder, its listing) decides the format; no file is opened here.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from dragsaw.errors import DataError

__all__ = [
    "VolumeFormat",
    "VOLUME_FORMATS",
    "NIFTI",
    "NRRD",
    "DICOM",
    "METAIMAGE",
    "EXTRA",
    "INSTALL_FIX",
    "match_volume_format",
    "is_volume",
    "is_dicom_folder",
    "volume_stem",
    "volume_format",
    "module_available",
    "require_reader",
    "supported_volumes",
]

EXTRA = "formats"
"""The pip extra that installs the small optional readers' packages (pynrrd, pydicom); ``itk`` has its own."""

INSTALL_FIX = f"pip install 'dragsaw[{EXTRA}]'"
"""The fix given when an optional reader's package is missing."""


@dataclass(frozen=True)
class VolumeFormat:
    """One volume format.

    Attributes:
        name: Display name (``"NIfTI"``, ``"NRRD"``, ``"DICOM series"``, ``"MetaImage"``).
        suffixes: File endings, lower case, longest first (``()`` for a folder format).
        folder_of: For a folder format, the ending of the files it holds (``".dcm"``); else None.
        reader: The MONAI reader class name given to ``LoadImage(reader=...)``.
        module: The Python module the reader needs (``"nibabel"``, ``"nrrd"``, ``"pydicom"``, ``"itk"``).
        package: The pip package that provides ``module``.
        extra: The dragsaw extra that installs ``package`` (None: a core dependency).
    """

    name: str
    suffixes: tuple[str, ...]
    folder_of: str | None
    reader: str
    module: str
    package: str
    extra: str | None

    @property
    def described(self) -> str:
        """``"NRRD (.nrrd, .nhdr)"`` or ``"DICOM series (a folder of .dcm files)"``."""
        where = f"a folder of {self.folder_of} files" if self.folder_of else ", ".join(self.suffixes)
        return f"{self.name} ({where})"


NIFTI = VolumeFormat("NIfTI", (".nii.gz", ".nii"), None, "NibabelReader", "nibabel", "nibabel", None)
NRRD = VolumeFormat("NRRD", (".nrrd", ".nhdr"), None, "NrrdReader", "nrrd", "pynrrd", EXTRA)
DICOM = VolumeFormat("DICOM series", (), ".dcm", "PydicomReader", "pydicom", "pydicom", EXTRA)
METAIMAGE = VolumeFormat("MetaImage", (".mha", ".mhd"), None, "ITKReader", "itk", "itk", "itk")  # ~100 MB: its own extra

VOLUME_FORMATS: tuple[VolumeFormat, ...] = (NIFTI, NRRD, DICOM, METAIMAGE)
"""Every volume format dragsaw reads, NIfTI first."""


def supported_volumes() -> str:
    """One line listing the formats: ``"NIfTI (.nii.gz, .nii), NRRD (.nrrd, .nhdr), ..."``."""
    return ", ".join(f.described for f in VOLUME_FORMATS)


def is_dicom_folder(path: str | Path) -> bool:
    """True when ``path`` is a folder holding at least one visible ``.dcm`` file (any letter case)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        return any(p.suffix.lower() == DICOM.folder_of and not p.name.startswith(".") and p.is_file()
                   for p in path.iterdir())
    except OSError:
        return False


def match_volume_format(path: str | Path) -> VolumeFormat | None:
    """The format of ``path`` from its name (and, for a folder, its listing), or None when it is no volume.

    Never raises and does not check that the reader's package is installed (see :func:`volume_format`).
    A file name equal to a suffix alone (``".nii"``) is no volume.
    """
    name = Path(path).name.lower()
    for fmt in VOLUME_FORMATS:
        if any(name.endswith(s) and len(name) > len(s) for s in fmt.suffixes):
            return fmt
    return DICOM if is_dicom_folder(path) else None


def is_volume(path: str | Path) -> bool:
    """True when :func:`match_volume_format` recognises ``path`` (a volume file's name or a DICOM series folder)."""
    return match_volume_format(path) is not None


def volume_stem(path: str | Path) -> str | None:
    """The case name of a volume: the file name without its ending (``"la_003.nii.gz"`` -> ``"la_003"``), a DICOM
    folder's name; None for anything else."""
    fmt = match_volume_format(path)
    if fmt is None:
        return None
    name = Path(path).name
    for suffix in fmt.suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def module_available(module: str) -> bool:
    """Whether ``module`` can be imported (found on the path; nothing is imported)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require_reader(fmt: VolumeFormat, path: str | Path, what: str = "image") -> VolumeFormat:
    """``fmt`` once its reader's module is installed.

    Raises:
        DataError: naming ``path``, the format, the missing package and ``pip install 'dragsaw[formats]'``.
    """
    if not module_available(fmt.module):
        raise DataError(
            f"{what} {path} is {fmt.name}, which needs the Python package {fmt.package!r} (module {fmt.module!r}, "
            f"read by MONAI's {fmt.reader}); it is not installed",
            fix=f"pip install 'dragsaw[{fmt.extra}]'" if fmt.extra else f"pip install {fmt.package}",
        )
    return fmt


def volume_format(path: str | Path, what: str = "image", *, check_reader: bool = True) -> VolumeFormat:
    """The format of the volume at ``path``, checked.

    Args:
        path: A volume file, or a folder holding one DICOM series.
        what: Word used in error messages ("image", "label", "channel").
        check_reader: Also require the reader's Python module (see :func:`require_reader`).

    Returns:
        One of :data:`VOLUME_FORMATS`.

    Raises:
        DataError: ``path`` is no volume (the message lists the supported formats), is a single ``.dcm`` file
            (give its folder), or its reader's module is missing (fix: ``pip install 'dragsaw[formats]'``).
    """
    fmt = match_volume_format(path)
    if fmt is None:
        path = Path(path)
        if path.suffix.lower() == DICOM.folder_of and path.is_file():
            raise DataError(
                f"{what} file {path} is one DICOM slice; a DICOM volume is read as the folder of its series",
                fix=f"give the folder {path.parent} (holding the .dcm files of one series only)",
            )
        kind = "folder" if path.is_dir() else "file"
        raise DataError(
            f"{what} {kind} {path} is not a NIfTI file (.nii or .nii.gz) nor another volume format dragsaw reads "
            f"({supported_volumes()})",
            fix="convert it to NIfTI, or give a file of one of these formats",
        )
    return require_reader(fmt, path, what) if check_reader else fmt
