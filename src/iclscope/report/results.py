"""A results folder: config, tables, figures, report; finished parts are reused on a rerun."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..errors import IclscopeError


class ResultsDir:
    """``out/config.json`` records what produced the folder. Re-running with the same config reuses
    finished tables (``has`` / ``read_table``); a different config in a non-empty folder is refused, so
    nothing already computed is overwritten by mistake."""

    def __init__(self, path: str | Path, config: dict, overwrite: bool = False):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        cfg_file = self.path / "config.json"
        new = json.loads(json.dumps(config, default=str))
        if cfg_file.exists() and not overwrite:
            old = json.loads(cfg_file.read_text())
            if old != new:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise IclscopeError(f"{self.path} holds results of a different config (differs in: "
                                    f"{', '.join(diff)}); choose another --out, or delete that folder to start over")
        cfg_file.write_text(json.dumps(new, indent=2))
        self.config = new

    def file(self, name: str) -> Path:
        return self.path / name

    def has(self, name: str) -> bool:
        return (self.path / name).exists()

    def write_table(self, name: str, df: pd.DataFrame) -> Path:
        p = self.path / name
        tmp = p.with_suffix(p.suffix + ".tmp")
        df.to_csv(tmp, index=False)
        tmp.replace(p)  # atomic: a killed run never leaves half a table
        return p

    def read_table(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.path / name)
