"""Process-level safety of a training run: one process per run directory, a clean stop on SIGINT/SIGTERM, no
half-made run directory, and disk-space messages that name the disk of ``--out``.

* :class:`RunLock`: ``fcntl.flock`` on ``RUN/.lock`` (holding the PID) for the life of the run. The kernel releases
  the lock when its holder ends, however it ends, so the lock file a killed run left behind is simply taken by the
  next process; a second live process (new run or ``--resume``) is refused with the holder's PID.
* :class:`SignalStop`: the first SIGINT or SIGTERM during training stops at the end of the current training step
  (after a running validation) with ``last.ckpt`` written; a second one stops at once. Under SLURM with Lightning's
  auto-requeue, SIGTERM is left to Lightning (its requeue handlers keep working).
* :class:`RunGuard`: ties them to :func:`dragsaw.engine.train`: takes the lock, creates a new run's directory only
  once every check passed (:meth:`RunGuard.claim`), removes what a new run created when it fails before its first
  checkpoint, and turns interrupts, a full disk and a diverged loss into one message each.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import lightning as L

from ..errors import ConfigError, DiskFullError, InterruptedRun

__all__ = ["LOCK_FILE", "RunGuard", "RunLock", "SignalStop", "checkpoint_bytes", "disk_full_cause", "free_space",
           "nearest_existing", "slurm_requeue"]

LOCK_FILE = ".lock"
"""The lock file in a run directory (its content is the PID of the process that holds it, or held it last)."""

_MARGIN = 1 << 20  # bytes besides the checkpoints: config.yaml, splits.json, the first log lines


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the folder whose disk a new path would land on)."""
    return next((p for p in [path, *path.parents] if p.exists()), Path.cwd())


def _mount_point(path: Path) -> Path:
    """The mount point of the file system holding ``path`` (for messages: which disk is meant)."""
    path = nearest_existing(path.absolute())
    try:
        device = path.stat().st_dev
        while path != path.parent and path.parent.stat().st_dev == device:
            path = path.parent
    except OSError:
        pass
    return path


def _mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def free_space(path: str | Path) -> tuple[int, Path]:
    """``(free bytes, mount point)`` of the disk that holds ``path`` (or would hold it, for a path to create)."""
    where = nearest_existing(Path(path))
    return shutil.disk_usage(where).free, _mount_point(where)


def checkpoint_bytes(module) -> int:
    """Estimated size of one training checkpoint of ``module``: its parameters three times (the weights and Adam's
    two moment estimates) plus its buffers."""
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return 3 * params + buffers


def disk_full_cause(exc: BaseException | None) -> BaseException | None:
    """The exception in ``exc``'s chain that reports a full disk or an exceeded quota (ENOSPC / EDQUOT), if any.

    PyTorch's writer reports it as a RuntimeError whose text names the OS error, so messages are matched too.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return exc
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


class RunLock:
    """An exclusive, process-lifetime lock on a run directory: ``fcntl.flock`` on ``RUN/.lock``.

    Args:
        run_dir: the run directory (it must exist when :meth:`acquire` is called).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> RunLock:
        """Take the lock and write this process's PID into the lock file.

        Raises:
            ConfigError: another live process holds it (naming its PID), or the lock file cannot be created.
        """
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no locking between processes
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ConfigError(f"cannot create the lock file {self.path} ({exc.strerror}); choose a writable --out or "
                              "fix the folder's permissions.") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise ConfigError(f"cannot lock {self.path} ({exc.strerror}); the file system of --out may not support "
                                  "file locks; choose an --out on a local disk.") from exc
            pid = self.holder()
            raise ConfigError(
                f"run directory {self.run_dir} is in use by another dragsaw process (PID {pid}, which holds "
                f"{self.path}); wait for it to end, stop it (kill {pid}: a training run then writes last.ckpt, and "
                f"`dragsaw train --resume {self.run_dir}` continues it), or choose another --out."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def held_by_other(self) -> str | None:
        """The PID of another live process holding this lock, or None (not held, no lock file, or not POSIX);
        takes and drops a shared lock to find out, so it never blocks and never changes the file."""
        try:
            import fcntl
        except ImportError:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return self.holder()
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def holder(self, wait: float = 1.0) -> str:
        """The PID written in the lock file (the holder writes it right after locking: wait up to ``wait`` s)."""
        deadline = time.monotonic() + wait
        while True:
            try:
                text = self.path.read_text().strip()
            except OSError:
                text = ""
            if text or time.monotonic() > deadline:
                return text or "unknown"
            time.sleep(0.05)

    def release(self) -> None:
        """Release the lock (the file stays: removing it would let two processes lock two different files)."""
        if self._fd is None:
            return
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None


class _Stop(BaseException):
    """Raised after SIGINT/SIGTERM, at a step boundary (``saved``: last.ckpt was just written) or at once.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on its way turns it into another error.
    """

    def __init__(self, signum: int, saved: bool, epoch: int | None = None, step: int | None = None) -> None:
        super().__init__(signum)
        self.signum, self.saved, self.epoch, self.step = signum, saved, epoch, step


class SignalStop(L.Callback):
    """SIGINT / SIGTERM during training stop at the next safe point with ``last_ckpt`` written.

    The handlers only record the signal while :attr:`in_fit` is set; the callback then saves ``last_ckpt`` at the end
    of the current training step and raises (a running validation is finished first, so its score and the epoch's
    checkpoint are complete). Outside training (set-up, final evaluation), or at a second signal, the handler
    raises at once. Only the main thread can install handlers; elsewhere nothing changes. With several
    processes the ranks agree after every step whether any of them was signalled, so they stop after the same step
    (``last.ckpt`` is written by rank 0).

    Args:
        last_ckpt: where the checkpoint of an interrupted run goes (the run's ``checkpoints/last.ckpt``).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, last_ckpt: Path) -> None:
        self.last = Path(last_ckpt)
        self.signum: int | None = None
        self.in_fit = False
        self._stopping = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """Install the handlers (main thread only), remembering the previous ones."""
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def leave_to_previous(self, sig: int) -> None:
        """Give ``sig`` back to the handler it had before :meth:`install` (e.g. SIGTERM to Lightning under SLURM)."""
        if sig in self._previous:
            previous = self._previous.pop(sig)
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    def restore(self) -> None:
        """Put the previous handlers back."""
        for sig in list(self._previous):
            self.leave_to_previous(sig)

    def _handle(self, signum, frame) -> None:
        if self._stopping:  # already stopping: let the clean-up finish
            return
        first = self.signum is None
        self.signum = signum
        if self.in_fit and first:
            return  # stop at the end of the current step (on_train_batch_end / on_validation_batch_end)
        self._stopping = True
        raise _Stop(signum, saved=False)

    def stop_now(self) -> None:
        """Raise the stop for a signal that arrived when no safe point was left (e.g. after the last step)."""
        self._stopping = True
        raise _Stop(self.signum, saved=False)

    def _maybe_stop(self, trainer) -> None:
        if self._stopping:
            return
        if trainer.world_size > 1:  # every rank stops after the same step: a signal to any of them counts for all
            self.signum = _agreed_signal(trainer, self.signum)
        if self.signum is None:
            return
        self._stopping = True
        trainer.save_checkpoint(self.last)
        raise _Stop(self.signum, saved=True, epoch=trainer.current_epoch, step=trainer.global_step)

    def on_train_start(self, trainer, pl_module) -> None:
        """Lightning has just put its own SIGTERM handler in front of ours (it would end the run with SIGTERMException
        at the next batch, without a checkpoint): on one device, where that handler does nothing else, ours is put
        back (with several processes too: the ranks then agree after every step whether any of them was signalled,
        and all save and stop together). Under SLURM auto-requeue SIGTERM was given back to Lightning before
        ``fit`` and stays Lightning's."""
        if signal.SIGTERM in self._previous and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._handle)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        """A training step is complete: the safe point to stop at. (A signal during validation lets the validation
        finish, so that the epoch's score and checkpoint are complete, and stops after the next step.)"""
        self._maybe_stop(trainer)


def _agreed_signal(trainer, signum: int | None) -> int | None:
    """The largest signal number any rank received (None when none did); every rank must call it after the same
    step (one all-reduce of one number)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return signum
    flag = torch.tensor([signum or 0], device=trainer.strategy.root_device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item()) or None


def slurm_requeue(trainer) -> bool:
    """Whether Lightning handles SIGTERM itself for this trainer (SLURM with auto-requeue)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    connector = getattr(trainer, "_accelerator_connector", None)
    environment = getattr(connector, "cluster_environment", None)
    if environment is None:
        return SLURMEnvironment.detect()
    return isinstance(environment, SLURMEnvironment) and bool(getattr(environment, "auto_requeue", False))


class RunGuard:
    """The process-level guard of one :func:`dragsaw.engine.train` call (a context manager around it).

    ``with RunGuard(run_dir, resume) as guard:`` installs the signal handlers and, for ``--resume``, takes the lock.
    A new run calls :meth:`claim` once its data and network are built: it checks the disk, creates the directory and
    takes the lock. On the way out the lock is released and the handlers restored; an exception is turned into its
    message (interrupt: exit 130/143; full disk; diverged loss), after a new run that failed before its first
    checkpoint has been removed again.

    Args:
        run_dir: the run directory (``--out`` or ``--resume``).
        resume: whether the run exists already.
        primary: whether this process owns the run directory (rank 0 of a run of several processes). The others
            only get the signal handling: they take no lock, create and remove nothing (:meth:`claim` only checks
            the disk), and rank 0 writes their shared checkpoints.
    """

    def __init__(self, run_dir: str | Path, resume: bool, primary: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.primary = primary
        self.lock = RunLock(self.run_dir)
        self.stop = SignalStop(self.run_dir / "checkpoints" / "last.ckpt")
        self.phase = "setup"  # "setup", "fit", "evaluation"
        self.trainer = None
        self._created: list[Path] = []  # folders this process created, outermost first
        self._claimed = False  # a new run's directory is this process's (created or empty, and locked)

    # ------------------------------------------------------------------ entering
    def __enter__(self) -> RunGuard:
        self.stop.install()
        try:
            if self.resume and self.primary:
                self.lock.acquire()
        except BaseException:
            self.stop.restore()
            raise
        return self

    def claim(self, task=None, after: Callable[[], None] | None = None) -> None:
        """A new run's directory, once everything else was checked: enough free disk for the first checkpoints of
        ``task``, then the directory (and its missing parents) created and locked, then ``after()`` (e.g. writing
        ``splits.json``). For a resumed run only the disk space is checked.

        Raises:
            DiskFullError: the disk of ``--out`` has less room than the first checkpoints need.
            ConfigError: another process holds the run, or filled the directory meanwhile.
        """
        if task is not None:
            copies = 1 if self.resume else 2  # a new run writes best.ckpt and last.ckpt; a resumed one replaces them
            need = copies * checkpoint_bytes(task) + _MARGIN
            free, mount = free_space(self.run_dir)
            if free < need:
                raise DiskFullError(
                    f"not enough free disk space for run {self.run_dir}: its first checkpoints need about {_mb(need)} "
                    f"({'best.ckpt and last.ckpt: ' if copies == 2 else ''}weights and Adam state of "
                    f"{_mb(checkpoint_bytes(task))} each), but the disk of --out (mounted at {mount}) has "
                    f"{_mb(free)} free; free space there or choose an --out on another disk."
                )
        if self.resume or not self.primary:
            return
        for folder in reversed([self.run_dir, *self.run_dir.parents]):
            if folder.exists():
                continue
            try:
                folder.mkdir()
                self._created.append(folder)
            except FileExistsError:  # another process made it meanwhile
                pass
            except OSError as exc:
                raise ConfigError(f"cannot create the run directory {self.run_dir} ({exc.strerror}: {folder}); choose "
                                  "a writable --out.") from exc
        self.lock.acquire()
        others = [p.name for p in self.run_dir.iterdir() if p.name != LOCK_FILE]
        if others:
            self.lock.release()
            self._created = []  # not ours: never removed
            raise ConfigError(
                f"run directory {self.run_dir} was filled by another process meanwhile ({', '.join(sorted(others)[:5])}"
                "); choose another --out, or continue that run with --resume."
            )
        self._claimed = True
        if after is not None:
            after()

    # ------------------------------------------------------------------ leaving
    def __exit__(self, kind, exc, tb) -> bool:
        try:
            if exc is None:
                return False
            removed = self._remove_if_unsaved()
            new = self._explain(exc, removed)
            if new is exc:
                return False  # nothing to add: the original propagates with its traceback
            raise new from (None if isinstance(exc, _Stop) else exc)
        finally:
            self.lock.release()
            self.stop.restore()

    def _checkpoints(self) -> list[Path]:
        ckpts = self.run_dir / "checkpoints"
        found = sorted(ckpts.glob("*.ckpt")) if ckpts.is_dir() else []
        return found + sorted(self.run_dir.glob("hpc_ckpt_*.ckpt"))  # Lightning's SLURM requeue checkpoints

    def _remove_if_unsaved(self) -> bool:
        """A new run that failed before its first checkpoint leaves nothing behind; returns whether it was removed."""
        if self.resume or not self._claimed or self._checkpoints():
            return False
        if self.run_dir in self._created:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        else:  # an empty folder that existed before: empty it again
            for path in self.run_dir.iterdir():
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        for folder in reversed(self._created):  # parents this process created, unless something else went into them
            try:
                folder.rmdir()
            except OSError:
                pass
        return True

    def _where(self) -> str:
        trainer = self.trainer
        if trainer is None:
            return ""
        return f" at epoch {trainer.current_epoch} step {trainer.global_step}"

    def _explain(self, exc: BaseException, removed: bool) -> BaseException:
        """The user-facing exception for ``exc`` (or ``exc`` itself when there is nothing to add)."""
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from .task import NonFiniteLossError

        run = self.run_dir
        resume_hint = f"continue with `dragsaw train --resume {run}`"
        gone = "no checkpoint had been written, so the new run directory was removed; start the run again"
        signum = exc.signum if isinstance(exc, _Stop) else self.stop.signum
        if isinstance(exc, SIGTERMException) and signum is None:
            signum = signal.SIGTERM
        if signum is not None and isinstance(exc, (_Stop, SIGTERMException, KeyboardInterrupt, Exception)):
            name = signal.Signals(signum).name
            code = 128 + int(signum)
            if isinstance(exc, _Stop) and exc.saved:
                return InterruptedRun(f"interrupted by {name} at epoch {exc.epoch} step {exc.step}; last.ckpt written; "
                                      f"{resume_hint}", code)
            if self.phase == "evaluation":
                return InterruptedRun(f"interrupted by {name} during the final evaluation; training is complete "
                                      f"(checkpoints/last.ckpt); run `dragsaw train --resume {run}` to evaluate it",
                                      code)
            if removed:
                return InterruptedRun(f"interrupted by {name}{self._where()}; {gone}", code)
            if self.phase == "setup" and not self.resume:
                return InterruptedRun(f"interrupted by {name} before training started; nothing was written", code)
            if self.phase == "setup":
                return InterruptedRun(f"interrupted by {name} before training resumed; the run is unchanged; "
                                      f"{resume_hint}", code)
            kept = "last.ckpt (the latest checkpoint) is kept" if self._checkpoints() else "no checkpoint was written"
            how = "under SLURM, Lightning's requeue handling stopped the run" if isinstance(exc, SIGTERMException) \
                else "stopped at once" if isinstance(exc, _Stop) else f"stopped with {type(exc).__name__}: {exc}"
            return InterruptedRun(f"interrupted by {name}{self._where()} ({how}); {kept}; {resume_hint}", code)
        full = disk_full_cause(exc)
        if full is not None:
            free, mount = free_space(run)
            what = getattr(full, "strerror", None) or "no space left on device"
            state = gone if removed else (f"the checkpoints written so far are kept; free space, then {resume_hint}"
                                          if self._checkpoints() else "free space, then start the run again")
            return DiskFullError(f"the disk of --out {run} (mounted at {mount}) is full ({what}; {_mb(free)} free "
                                 f"now){self._where()}; {state}; or choose an --out on another disk.")
        if isinstance(exc, NonFiniteLossError):
            if removed:
                state = "No checkpoint had been written, so the new run directory was removed."
            elif self._checkpoints():
                state = (f"The last good checkpoint is kept (checkpoints/last.ckpt): after changing the settings, "
                         f"{resume_hint} (e.g. with --set train.lr=...).")
            else:
                state = "No checkpoint had been written."
            return NonFiniteLossError(f"{exc} {state}")
        return exc
