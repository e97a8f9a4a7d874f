"""Make fairseq's checkpoint copies atomic.

fairseq writes the first checkpoint of a save atomically (`.tmp` + rename) but then *copies*
it to the others (checkpoint_last.pt, checkpoint_best.pt, ...) with `PathManager.copy`, i.e.
`shutil.copyfile` straight onto the destination. A job killed during that copy leaves a
truncated checkpoint_last.pt, which the next run picks up and cannot load. Importing the plugin
replaces `PathManager.copy`, for local paths, by copy-to-`<dst>.tmp` + `os.replace`, so every
checkpoint file is either the old one or the complete new one. Remote (iopath) paths keep
fairseq's behaviour.
"""
import os
import shutil

from fairseq.file_io import PathManager

_fairseq_copy = PathManager.copy


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    if "://" in str(src_path) or "://" in str(dst_path):
        return _fairseq_copy(src_path, dst_path, overwrite=overwrite)
    if os.path.exists(dst_path) and not overwrite:
        return False
    tmp = f"{dst_path}.tmp"
    shutil.copyfile(src_path, tmp)
    os.replace(tmp, dst_path)
    return True


def install():
    PathManager.copy = staticmethod(atomic_copy)
