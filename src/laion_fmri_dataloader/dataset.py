"""``LAIONfMRIDataset``: the loader of the LAION-fMRI GLM derivatives.

Examples
--------
Load a subject's z map and plot it::

    from laion_fmri_dataloader import LAIONfMRIDataset
    from nilearn import plotting

    dataset = LAIONfMRIDataset(data_dir="./laion-fmri-data")
    img = dataset.load_first_level_contrast(
        subject="sub-01", task="experiment", contrast="faceVsBaseline", stat_type="z"
    )
    plotting.plot_stat_map(img, threshold=3.1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import nibabel as nib
from pydantic import ValidationError

from laion_fmri_dataloader import layout
from laion_fmri_dataloader.contrasts import order_contrast_names
from laion_fmri_dataloader.errors import CorruptFileError, NotFoundError, did_you_mean
from laion_fmri_dataloader.io.files import load_image
from laion_fmri_dataloader.io.storage import LocalStore, Store, is_remote, open_store
from laion_fmri_dataloader.sidecar import (
    DatasetDescription,
    MapSidecar,
    changed_inputs,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["PYBIDS_CONFIG", "FirstLevelState", "LAIONfMRIDataset", "pybids_layout"]

#: pybids configuration of our entities (``contrast``, ``stat``, ``correction``,
#: ``level``), for ``BIDSLayout(path, config=["bids", "derivatives",
#: PYBIDS_CONFIG], validate=False)``.
PYBIDS_CONFIG = str(Path(__file__).parent / "data" / "pybids_config.json")


@dataclass(frozen=True)
class FirstLevelState:
    """What a subject's first level holds and whether it is up to date.

    Attributes
    ----------
    subject, task : str
        ``sub-<label>`` and the task label.
    sidecar : MapSidecar or None
        The sidecar of one of its maps (model, confounds, runs, parameters);
        None if no map has one.
    missing : list of str
        Maps of its contrasts that are not there (``faceVsScene stat-t``).
    changed_inputs : list of str
        Input files whose size or modification time changed since the maps
        were made (paths as the sidecar records them).
    missing_inputs : list of str
        Recorded inputs not found (moved, deleted, or the raw dataset is not
        where ``dataset_description.json`` says); they cannot be checked.
    """

    subject: str
    task: str
    sidecar: MapSidecar | None
    missing: list[str] = field(default_factory=list)
    changed_inputs: list[str] = field(default_factory=list)
    missing_inputs: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``incomplete``, ``out of date``, ``unchecked`` (no sidecar) or ``ok``."""
        if self.missing:
            return "incomplete"
        if self.changed_inputs:
            return "out of date"
        if self.sidecar is None:
            return "unchecked"
        return "ok"


__all__ = ["LAIONfMRIDataset"]


def _holding_dataset(
    glm_dir: str | os.PathLike,
    cache_dir: str | os.PathLike | None,
    storage_options: dict | None,
) -> Store | None:
    """The dataset two levels above a GLM folder (``<dataset>/derivatives/glm``).

    A local folder's is its grandparent; a URL's only if it ends with
    ``derivatives/glm``, since a bucket may hold the GLM folder alone.
    """
    location = os.fspath(glm_dir)
    if not is_remote(location):
        return open_store(Path(location).expanduser().parent.parent)
    suffix = f"/{layout.DERIVATIVE_SUBDIR}"
    if not location.rstrip("/").endswith(suffix):
        return None
    return open_store(
        location.rstrip("/").removesuffix(suffix),
        cache_dir=cache_dir,
        storage_options=storage_options,
    )


def _is_map(entities: dict[str, str]) -> bool:
    """A map of all runs, not a sidecar, table or half-run map: what listings hold."""
    return (
        entities.get("suffix") == "map"
        and entities.get("extension") == ".nii.gz"
        and "split" not in entities
    )


def _first_problem(error: ValidationError) -> str:
    """The first thing pydantic found wrong, in one line."""
    problems = error.errors(include_url=False)
    first = problems[0]
    where = ".".join(str(part) for part in first["loc"])
    text = f"{where}: {first['msg']}" if where else first["msg"]
    if len(problems) > 1:
        text += f"; and {len(problems) - 1} more"
    return text


class LAIONfMRIDataset:
    """The GLM derivatives of a LAION-fMRI (or any BIDS) dataset.

    Parameters
    ----------
    data_dir : str or path-like
        The dataset's root folder, which holds ``derivatives/glm``; the GLM
        derivative folder itself is accepted too.  A URL such as
        ``s3://bucket/prefix`` reads from an object store.
    cache_dir : str or path-like, optional
        Where files of a remote dataset are cached (default: the user's cache
        folder, or ``$LAION_FMRI_CACHE``).  Unused for a local folder.
    storage_options : dict, optional
        Options of the remote file system (fsspec), e.g. ``{"anon": False}``
        or ``{"client_kwargs": {"endpoint_url": ...}}``.

    Raises
    ------
    NotFoundError
        If ``data_dir`` holds no GLM derivatives.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict | None = None,
    ) -> None:
        self.data_dir = data_dir
        dataset_store = open_store(
            data_dir, cache_dir=cache_dir, storage_options=storage_options
        )
        self._open_options = (cache_dir, storage_options)
        # The dataset that holds derivatives/glm (None: found when needed).
        self._dataset_store: Store | None = dataset_store
        if dataset_store.exists(layout.DERIVATIVE_SUBDIR):
            self._store: Store = dataset_store.child(layout.DERIVATIVE_SUBDIR)
        elif dataset_store.exists(layout.FIRST_LEVEL_DIR) or dataset_store.exists(
            layout.GROUP_LEVEL_DIR
        ):
            self._store = dataset_store
            self._dataset_store = None
        else:
            raise NotFoundError(
                f"{dataset_store.describe()} holds no GLM derivatives (no "
                f"{layout.DERIVATIVE_SUBDIR} folder); make them with "
                "`laion-fmri-glm glm DATA_DIR DATA_DIR/derivatives/glm participant` "
                "followed by `... group`, or try `laion-fmri-glm demo`"
            )

    def __repr__(self) -> str:
        return (
            f"LAIONfMRIDataset(data_dir={os.fspath(self.data_dir)!r}, "
            f"subjects={self.subjects})"
        )

    @property
    def root(self) -> str:
        """Where the GLM derivatives are (path or URL)."""
        return self._store.describe()

    @cached_property
    def _first_level_files(self) -> dict[str, list[dict[str, str]]]:
        """Parsed names of every subject's files, by bare subject label."""
        files = {}
        for folder in self._store.listdir(layout.FIRST_LEVEL_DIR):
            if folder.startswith("sub-"):
                names = self._store.listdir(layout.FIRST_LEVEL_DIR / folder)
                files[folder[len("sub-") :]] = [
                    entities for entities in map(layout.parse_name, names) if entities
                ]
        return files

    @cached_property
    def _group_files(self) -> list[dict[str, str]]:
        names = self._store.listdir(layout.GROUP_LEVEL_DIR)
        return [entities for entities in map(layout.parse_name, names) if entities]

    @property
    def subjects(self) -> list[str]:
        """Subjects with first-level maps, as ``sub-<label>``."""
        return [f"sub-{label}" for label in sorted(self._first_level_files)]

    def tasks(self, subject: str | None = None) -> list[str]:
        """Tasks with first-level maps (for one subject, or any)."""
        labels = [self._subject(subject)] if subject else list(self._first_level_files)
        return sorted(
            {
                entities["task"]
                for label in labels
                for entities in self._first_level_files[label]
                if "task" in entities
            }
        )

    def contrasts(
        self, subject: str | None = None, task: str | None = None
    ) -> list[str]:
        """Contrasts with maps: a subject's, or the group's if ``subject`` is None.

        Standard contrasts come first, in their usual order, then any others.
        """
        if subject is None:
            entries: Iterable[dict[str, str]] = self._group_files or [
                entities
                for files in self._first_level_files.values()
                for entities in files
            ]
        else:
            entries = self._first_level_files[self._subject(subject)]
        return order_contrast_names(
            entities["contrast"]
            for entities in entries
            if _is_map(entities) and (task is None or entities.get("task") == task)
        )

    def stat_types(
        self, subject: str | None = None, task: str | None = None
    ) -> list[str]:
        """Stat types present for a subject (or at the group level if None)."""
        if subject is None:
            entries = self._group_files
            known = layout.GROUP_STAT_TYPES
        else:
            entries = self._first_level_files[self._subject(subject)]
            known = layout.FIRST_LEVEL_STAT_TYPES
        found = {
            entities["stat"]
            for entities in entries
            if _is_map(entities)
            and "stat" in entities
            and (task is None or entities.get("task") == task)
        }
        return [stat for stat in known if stat in found]

    def corrections(self, contrast: str | None = None) -> list[str]:
        """Corrections with a group map (for one contrast, or any)."""
        found = {
            entities["correction"]
            for entities in self._group_files
            if _is_map(entities)
            and "correction" in entities
            and (contrast is None or entities.get("contrast") == contrast)
        }
        return [name for name in layout.CORRECTIONS if name in found]

    def _subject(self, subject: str) -> str:
        label = layout.subject_label(subject)
        if label not in self._first_level_files:
            raise NotFoundError(
                f"subject 'sub-{label}' not found in {self.root}; "
                + did_you_mean(f"sub-{label}", self.subjects)
            )
        return label

    def _require(self, relative: PurePosixPath, missing: str) -> Path:
        if not self._store.exists(relative):
            raise NotFoundError(missing)
        return self._store.local_path(relative)

    def get_path(
        self,
        subject: str | None = None,
        task: str = "experiment",
        contrast: str = "faceVsBaseline",
        stat_type: str = "z",
        correction: str | None = None,
    ) -> Path:
        """Local path of a map (first level if ``subject`` is given, else group).

        For a remote dataset, the file is fetched into the cache first.

        Raises
        ------
        InvalidLabelError
            If a label or a stat type / correction name is not allowed.
        NotFoundError
            If the map does not exist; the message lists what does.
        """
        return self._store.local_path(
            self._locate(subject, task, contrast, stat_type, correction)
        )

    def has_map(
        self,
        subject: str | None = None,
        task: str = "experiment",
        contrast: str = "faceVsBaseline",
        stat_type: str = "z",
        correction: str | None = None,
    ) -> bool:
        """Whether a map exists (no download, even for a remote dataset)."""
        if subject is None:
            relative = layout.group_map(contrast, stat_type, correction)
        else:
            relative = layout.first_level_map(subject, task, contrast, stat_type)
        return self._store.exists(relative)

    def has_mask(self, subject: str | None = None, task: str = "experiment") -> bool:
        """Whether a subject's first-level mask (or the group mask) exists."""
        if subject is None:
            return self._store.exists(layout.group_mask())
        return self._store.exists(layout.first_level_mask(subject, task))

    def _locate(self, subject, task, contrast, stat_type, correction) -> PurePosixPath:
        """Relative path of an existing map, or a NotFoundError listing what exists."""
        if subject is None:
            return self._group_relative(contrast, stat_type, correction)
        return self._first_level_relative(subject, task, contrast, stat_type)

    def _first_level_relative(
        self, subject: str, task: str, contrast: str, stat_type: str
    ) -> PurePosixPath:
        relative = layout.first_level_map(subject, task, contrast, stat_type)
        label = self._subject(subject)
        if self._store.exists(relative):
            return relative
        if task not in self.tasks(subject):
            raise NotFoundError(
                f"task '{task}' not found for sub-{label}; "
                + did_you_mean(task, self.tasks(subject))
            )
        contrasts = self.contrasts(subject, task)
        if contrast not in contrasts:
            raise NotFoundError(
                f"contrast '{contrast}' not found for sub-{label} task-{task}; "
                + did_you_mean(contrast, contrasts)
            )
        raise NotFoundError(
            f"stat type '{stat_type}' of contrast '{contrast}' not found for "
            f"sub-{label} task-{task}; "
            + did_you_mean(stat_type, self.stat_types(subject, task))
        )

    def _group_relative(
        self, contrast: str, stat_type: str, correction: str | None
    ) -> PurePosixPath:
        if correction is not None and stat_type != "z":
            layout.validate_choice(stat_type, ("z",), "stat_type of a corrected map")
        relative = layout.group_map(contrast, stat_type, correction)
        if self._store.exists(relative):
            return relative
        contrasts = order_contrast_names(
            entities["contrast"] for entities in self._group_files if _is_map(entities)
        )
        if not contrasts:
            raise NotFoundError(
                f"no group-level maps in {self.root}; make them with "
                "`laion-fmri-glm glm DATA_DIR DATA_DIR/derivatives/glm group`"
            )
        if contrast not in contrasts:
            raise NotFoundError(
                f"contrast '{contrast}' not found at the group level; "
                + did_you_mean(contrast, contrasts)
            )
        if correction is not None:
            raise NotFoundError(
                f"no {correction}-corrected map for contrast '{contrast}'; "
                + did_you_mean(correction, self.corrections(contrast))
            )
        raise NotFoundError(
            f"stat type '{stat_type}' not found at the group level for '{contrast}'; "
            + did_you_mean(stat_type, self.stat_types())
        )

    def load_first_level_contrast(
        self,
        subject: str,
        task: str = "experiment",
        contrast: str = "faceVsBaseline",
        stat_type: str = "z",
    ) -> nib.Nifti1Image:
        """Load one subject's contrast map.

        Parameters
        ----------
        subject : str
            ``"sub-01"`` or ``"01"``.
        task : str
            Task label, e.g. ``"experiment"``.
        contrast : str
            Contrast name, e.g. ``"faceVsBaseline"``.
        stat_type : {'z', 't', 'effect', 'variance'}
            ``effect`` is in percent signal change; ``variance`` is its variance.

        Returns
        -------
        nibabel.Nifti1Image
            A 3D map in the subject's space, ready for ``nilearn.plotting``.
        """
        layout.validate_choice(stat_type, layout.FIRST_LEVEL_STAT_TYPES, "stat_type")
        path = self.get_path(subject, task, contrast, stat_type)
        return load_image(path, what="map")

    def load_all_contrasts(
        self, subject: str, task: str = "experiment", stat_type: str = "z"
    ) -> dict[str, nib.Nifti1Image]:
        """Load every contrast of a subject, standard contrasts first, in order."""
        layout.validate_choice(stat_type, layout.FIRST_LEVEL_STAT_TYPES, "stat_type")
        self._subject(subject)
        names = [
            contrast
            for contrast in self.contrasts(subject, task)
            if self._store.exists(
                layout.first_level_map(subject, task, contrast, stat_type)
            )
        ]
        if not names:
            raise NotFoundError(
                f"no {stat_type} maps for {subject} task-{task}; tasks: "
                f"{', '.join(self.tasks(subject)) or 'none'}; stat types: "
                f"{', '.join(self.stat_types(subject, task)) or 'none'}"
            )
        return {
            name: self.load_first_level_contrast(subject, task, name, stat_type)
            for name in names
        }

    def load_group_level_contrast(
        self, contrast: str, stat_type: str = "z", correction: str | None = None
    ) -> nib.Nifti1Image:
        """Load a group map, uncorrected or corrected.

        Parameters
        ----------
        contrast : str
            Contrast name.
        stat_type : {'z', 't', 'p'}
            Uncorrected statistic (``p`` is two-sided unless the sidecar says).
        correction : {None, 'fdr', 'fwe'}
            If given, the corrected map: the z map with every voxel that does
            not survive the correction set to 0.
        """
        if correction is not None:
            layout.validate_choice(correction, layout.CORRECTIONS, "correction")
        else:
            layout.validate_choice(stat_type, layout.GROUP_STAT_TYPES, "stat_type")
        path = self.get_path(None, "experiment", contrast, stat_type, correction)
        return load_image(path, what="map")

    def load_metadata(
        self,
        subject: str | None = None,
        task: str = "experiment",
        contrast: str = "faceVsBaseline",
        stat_type: str = "z",
        correction: str | None = None,
    ) -> MapSidecar:
        """The sidecar of a map, as a :class:`~.sidecar.MapSidecar`.

        The documented keys come first (``AnalysisLevel``, ``Model``,
        ``Contrasts``, ``Software``, ``Confounds``), ours after them; sidecars
        of earlier versions are returned in this shape.

        Raises
        ------
        NotFoundError
            If the map or its sidecar does not exist.
        CorruptFileError
            If the sidecar is not valid JSON or not a map's sidecar; the
            message names the file.
        """
        relative = self._locate(subject, task, contrast, stat_type, correction)
        sidecar = layout.sidecar_of(relative)
        if not self._store.exists(sidecar):
            raise NotFoundError(
                f"map {self._store.describe(relative)} has no sidecar "
                f"{self._store.describe(sidecar)}"
            )
        return self._read_sidecar(sidecar)

    @cached_property
    def source_dir(self) -> Path | None:
        """The raw BIDS dataset of a local dataset, or None if not known.

        The source named by ``dataset_description.json`` (a path relative to
        the GLM folder), else the folder that holds ``derivatives/glm``.
        """
        if not isinstance(self._store, LocalStore):
            return None
        root = self._store.root
        try:
            description = DatasetDescription.model_validate_json(
                (root / "dataset_description.json").read_text(encoding="utf-8")
            )
            source = description.local_source(root)
        except (OSError, ValueError):
            source = None
        if source is None and root.parts[-2:] == layout.DERIVATIVE_SUBDIR.parts:
            source = root.parent.parent
        return source if source is not None and source.is_dir() else None

    def first_level_state(
        self, subject: str, task: str = "experiment"
    ) -> FirstLevelState:
        """A subject's first level: its parameters, what is missing, what changed.

        Inputs are checked (size and modification time against the sidecar's
        ``InputFiles``) for a local dataset whose raw dataset is found
        (:attr:`source_dir`).
        """
        label = self._subject(subject)
        contrasts = self.contrasts(subject, task)
        missing = [
            f"{contrast} stat-{stat}"
            for contrast in contrasts
            for stat in layout.FIRST_LEVEL_STAT_TYPES
            if not self.has_map(label, task, contrast, stat)
        ]
        sidecar = None
        for contrast in contrasts:
            for stat in layout.FIRST_LEVEL_STAT_TYPES:
                relative = layout.sidecar_of(
                    layout.first_level_map(label, task, contrast, stat)
                )
                if self._store.exists(relative):
                    sidecar = self._read_sidecar(relative)
                    break
            if sidecar is not None:
                break
        changed: list[str] = []
        not_found: list[str] = []
        if sidecar is not None and self.source_dir is not None:
            changed, not_found = changed_inputs(sidecar.InputFiles, self.source_dir)
        return FirstLevelState(
            f"sub-{label}", task, sidecar, missing, changed, not_found
        )

    def _read_sidecar(self, relative: PurePosixPath) -> MapSidecar:
        path = self._store.local_path(relative)
        try:
            return MapSidecar.model_validate_json(path.read_bytes())
        except ValidationError as error:
            raise CorruptFileError(
                f"sidecar {self._store.describe(relative)} is not valid "
                f"({_first_problem(error)}); restore it, or make it again with "
                "`laion-fmri-glm glm ... --force`"
            ) from None

    def load_design_matrix_image(self, subject: str, task: str = "experiment") -> Path:
        """Path of a subject's design-matrix figure (PNG, one panel per run)."""
        label = self._subject(subject)
        return self._require(
            layout.design_matrix_png(label, task),
            f"no design-matrix figure for sub-{label} task-{task}; tasks: "
            + (", ".join(self.tasks(subject)) or "none"),
        )

    def load_mask(
        self, subject: str | None = None, task: str = "experiment"
    ) -> nib.Nifti1Image:
        """The brain mask of a subject's first level, or the group mask if None.

        Raises
        ------
        NotFoundError
            If the mask was not written.
        """
        if subject is None:
            relative = layout.group_mask()
        else:
            relative = layout.first_level_mask(self._subject(subject), task)
        path = self._require(
            relative, f"no brain mask {self._store.describe(relative)}"
        )
        return load_image(path, what="mask")

    def load_cluster_table(self, contrast: str, correction: str) -> pd.DataFrame:
        """The cluster table of a corrected group map, as written.

        Parameters
        ----------
        contrast : str
            Contrast name.
        correction : {'fdr', 'fwe'}
            The correction of the map.

        Returns
        -------
        pandas.DataFrame
            nilearn's columns (``Cluster ID``, peak ``X``, ``Y``, ``Z`` in mm,
            ``Peak Stat``, ``Cluster Size (mm3)``) and ``Cluster Size
            (voxels)``; sub-peak rows have an empty size (``""``), as in
            :func:`nilearn.reporting.get_clusters_table`.

        Raises
        ------
        NotFoundError
            If the corrected map has no cluster table.
        """
        import pandas as pd

        layout.validate_choice(correction, layout.CORRECTIONS, "correction")
        relative = layout.cluster_table(contrast, correction)
        path = self._require(
            relative,
            f"no {correction}-corrected cluster table for contrast '{contrast}' "
            f"({self._store.describe(relative)})",
        )
        return pd.read_csv(path, sep="\t", keep_default_na=False)

    @cached_property
    def _input_stores(self) -> list[Store]:
        """Where the inputs named in the sidecars may be, likeliest first.

        Sidecars name runs relative to the BIDS root: the raw dataset of a
        local dataset (:attr:`source_dir`), then the dataset that holds
        ``derivatives/glm`` (local or remote).
        """
        stores: list[Store] = []
        if self.source_dir is not None:
            stores.append(LocalStore(self.source_dir))
        holding = self._dataset_store or _holding_dataset(
            self.data_dir, *self._open_options
        )
        if holding is not None:
            stores.append(holding)
        return stores

    def _input(self, name: str) -> tuple[Store | None, PurePosixPath]:
        path = PurePosixPath(name)
        if path.is_absolute():
            return LocalStore(path.parent), PurePosixPath(path.name)
        stores = self._input_stores
        for store in stores:
            if store.exists(path.parent):
                return store, path
        return (stores[-1] if stores else None), path

    def input_location(self, name: str) -> str:
        """Where an input of the analysis is, or would be: a path or URL.

        Parameters
        ----------
        name : str
            A file as the sidecars' ``Runs`` name it: relative to the BIDS
            dataset the GLM was fitted on, or absolute.  It is looked for in
            the raw dataset of a local dataset (:attr:`source_dir`), then in
            the dataset that holds ``derivatives/glm`` (local or remote).
        """
        store, relative = self._input(name)
        return name if store is None else store.describe(relative)

    def find_input(self, name: str) -> Path | None:
        """Local path of an input of the analysis (fetched if remote), or None.

        Parameters
        ----------
        name : str
            As for :meth:`input_location`.

        Returns
        -------
        Path or None
            None if the file is not there (or is a link to content that is
            not, as in a git-annex dataset whose file was not fetched).
        """
        store, relative = self._input(name)
        if store is None or not store.exists(relative):
            return None
        try:
            return store.local_path(relative)
        except NotFoundError:
            return None

    def last_modified(self, subject: str | None = None) -> int | None:
        """When a subject's first-level files (or the group's) last changed.

        Returns
        -------
        int or None
            Nanoseconds since the epoch (0 if the folder holds no file); None
            for a remote dataset, whose times are not compared.
        """
        if not isinstance(self._store, LocalStore):
            return None
        folder = (
            layout.GROUP_LEVEL_DIR
            if subject is None
            else layout.first_level_dir(self._subject(subject))
        )
        paths = [
            self._store.local_path(folder / name)
            for name in self._store.listdir(folder)
        ]
        return max(
            (path.stat().st_mtime_ns for path in paths if path.is_file()), default=0
        )

    def rois(self, subject: str | None = None) -> list[tuple[str, str]]:
        """Regions with fROIs, as ``(roi, hemi)`` pairs, sorted.

        Parameters
        ----------
        subject : str, optional
            A subject's fROIs (all runs); the group parcels if None.
        """
        if subject is None:
            entries = [e for e in self._group_files if e.get("suffix") == "parcel"]
        else:
            entries = [
                e
                for e in self._first_level_files[self._subject(subject)]
                if e.get("suffix") == "roi" and "split" not in e
            ]
        return sorted(
            {
                (e["roi"], e["hemi"])
                for e in entries
                if e.get("extension") == ".nii.gz" and "hemi" in e
            }
        )

    def load_roi(
        self,
        subject: str | None = None,
        roi: str = "FFA",
        hemi: str = "R",
        task: str = "experiment",
        split: str | None = None,
    ) -> nib.Nifti1Image:
        """A subject's fROI mask, or the group parcel if ``subject`` is None.

        Parameters
        ----------
        subject : str or None
            ``"sub-01"`` or ``"01"``; None loads the group parcel of the region.
        roi : str
            Region name, e.g. ``"FFA"`` (see :meth:`rois`).
        hemi : {'L', 'R'}
            Hemisphere.
        task : str
            Task label.
        split : {None, 'odd', 'even'}
            The fROI defined from all runs (None) or from one half of them.

        Returns
        -------
        nibabel.Nifti1Image
            A uint8 mask (1 inside the region) on the first-level maps' grid.

        Raises
        ------
        NotFoundError
            If the region does not exist; the message lists those that do.
        """
        layout.validate_choice(hemi, ("L", "R"), "hemi")
        if split is not None:
            layout.validate_choice(split, layout.SPLITS, "split")
        if subject is None:
            relative = layout.group_roi_map(roi, hemi, "parcel")
            where, available = "at the group level", self.rois()
        else:
            relative = layout.roi_mask(subject, task, roi, hemi, split)
            label = self._subject(subject)
            where, available = f"for sub-{label}", self.rois(subject)
        if not self._store.exists(relative):
            names = [f"{name}-{side}" for name, side in available]
            if not names:
                raise NotFoundError(
                    f"no fROIs {where} in {self.root}; make them with "
                    "`laion-fmri-glm glm BIDS_DIR DATA_DIR/derivatives/glm roi`"
                )
            if (roi, hemi) in available:
                raise NotFoundError(
                    f"fROI {roi}-{hemi} {where} has no task-{task}"
                    + ("" if split is None else f" split-{split}")
                    + " mask (split fROIs need at least two runs)"
                )
            raise NotFoundError(
                f"fROI {roi}-{hemi} not found {where}; "
                + did_you_mean(f"{roi}-{hemi}", names)
            )
        return load_image(self._store.local_path(relative), what="fROI mask")

    def load_roi_responses(
        self, subject: str | None = None, task: str = "experiment"
    ) -> pd.DataFrame:
        """Held-out response profiles: one row per subject, roi, hemi, condition.

        ``psc`` is the percent signal change measured in the runs that did not
        define the fROI (the average of the odd-run fROI in even runs and the
        reverse); ``dice`` is the overlap of the two half-run fROIs.

        Parameters
        ----------
        subject : str, optional
            One subject's rows; every subject's if None.
        task : str
            Task label.
        """
        import pandas as pd

        labels = (
            [self._subject(subject)]
            if subject is not None
            else sorted(self._first_level_files)
        )
        tables = []
        for label in labels:
            relative = layout.roi_responses(label, task)
            if self._store.exists(relative):
                path = self._store.local_path(relative)
                tables.append(pd.read_csv(path, sep="\t", na_values="n/a"))
        if not tables:
            who = f"sub-{labels[0]}" if subject is not None else "any subject"
            raise NotFoundError(
                f"no fROI response table for {who} (task-{task}) in {self.root}; "
                "profiles need at least two runs and the roi level: "
                "`laion-fmri-glm glm BIDS_DIR DATA_DIR/derivatives/glm roi`"
            )
        return pd.concat(tables, ignore_index=True)

    def load_group_roi_responses(self) -> pd.DataFrame | None:
        """The group table of fROI responses (mean, SEM, n, Dice), or None.

        None when the roi level has not run.
        """
        import pandas as pd

        relative = layout.group_roi_responses()
        if not self._store.exists(relative):
            return None
        return pd.read_csv(self._store.local_path(relative), sep="\t", na_values="n/a")

    def load_roi_figure(self, roi: str, hemi: str) -> Path | None:
        """Path of a region's response-profile bar plot (PNG), or None."""
        relative = layout.group_roi_figure(roi, hemi)
        return (
            self._store.local_path(relative) if self._store.exists(relative) else None
        )


def pybids_layout(path: str | os.PathLike, **options):
    """A pybids ``BIDSLayout`` of GLM derivatives, our sidecars attached.

    ``BIDSLayout(path, config=["bids", "derivatives", PYBIDS_CONFIG],
    validate=False)`` finds our maps by ``subject``, ``task``, ``contrast``,
    ``stat``, ``correction`` and ``level`` (``first`` or ``group``), e.g.
    ``layout.get(contrast="faceVsScene", stat="z")``.  pybids attaches a JSON
    sidecar to a file by the BIDS suffix of both names, which the documented
    names (``..._stat-z.nii.gz``, ``..._fdr-corrected.nii.gz``) do not have;
    so this also gives each map its own sidecar, where ``get_metadata`` finds
    it.  Masks carry a suffix (``_mask``) and get theirs from pybids itself.

    Parameters
    ----------
    path : path-like
        The GLM derivative folder (``<data_dir>/derivatives/glm``).
    **options
        Further arguments of ``BIDSLayout``.

    Returns
    -------
    bids.BIDSLayout

    Raises
    ------
    ImportError
        If pybids is not installed (``pip install pybids``).
    """
    from bids import BIDSLayout

    # pybids' own way of storing a sidecar's keys (bids.layout.index); pybids
    # has no public call for it.
    from bids.layout.models import Entity, Tag, _create_tag_dict

    options.setdefault("validate", False)
    bids_layout = BIDSLayout(
        path, config=["bids", "derivatives", PYBIDS_CONFIG], **options
    )
    session = bids_layout.session
    entities = {entity.name: entity for entity in session.query(Entity)}
    rows = []
    for bids_file in bids_layout.get(extension=".nii.gz"):
        if not layout.parse_name(bids_file.filename) or bids_file.get_metadata():
            continue
        sidecar = Path(bids_file.path).with_name(
            layout.sidecar_of(PurePosixPath(bids_file.filename)).name
        )
        if not sidecar.is_file():
            continue
        for key, value in json.loads(sidecar.read_text(encoding="utf-8")).items():
            if value is None:
                continue
            if key not in entities:
                entities[key] = Entity(key)
                session.add(entities[key])
            rows.append(
                _create_tag_dict(bids_file, entities[key], value, is_metadata=True)
            )
    session.bulk_insert_mappings(Tag, rows)
    session.commit()
    return bids_layout
