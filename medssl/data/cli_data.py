"""Rich renderers behind ``medssl data list`` and ``medssl data info FLAG``."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from medssl.data.medmnist import (
    DATA_DIR_ENV,
    available_sizes,
    cache_dir,
    dataset_info,
    file_name,
    find_file,
    known_flags,
    md5sum,
    official_md5,
    official_url,
)


def _list_table() -> Table:
    table = Table(title="MedMNIST datasets", title_justify="left")
    for name, justify in [
        ("flag", "left"),
        ("dims", "right"),
        ("task", "left"),
        ("classes", "right"),
        ("channels", "right"),
        ("train", "right"),
        ("val", "right"),
        ("test", "right"),
        ("local sizes", "left"),
    ]:
        table.add_column(name, justify=justify)
    for flag in known_flags():
        info = dataset_info(flag)
        local = [str(s) for s in available_sizes(flag) if find_file(flag, s) is not None]
        n = info["n_samples"]
        table.add_row(
            flag,
            f"{info['spatial_dims']}D",
            Text(info["task"]),
            str(len(info["label"])),
            str(info["n_channels"]),
            str(n["train"]),
            str(n["val"]),
            str(n["test"]),
            Text(", ".join(local) if local else "-"),
        )
    return table


def print_data_list(console: Console) -> None:
    """Print a table of all known MedMNIST flags and which sizes exist locally."""
    console.print(_list_table())
    console.print(
        Text(f"searched: ${DATA_DIR_ENV}, ${DATA_DIR_ENV}/<flag>/, {cache_dir()}", style="dim")
    )


def data_list() -> str:
    """The ``data list`` table rendered to plain text."""
    console = Console(file=io.StringIO(), width=140, color_system=None)
    print_data_list(console)
    return console.file.getvalue()


def _md5_status(path: Path, expected: str | None) -> Text:
    if expected is None:
        return Text("no official MD5")
    got = md5sum(path)
    if got == expected:
        return Text(f"{got} (official)", style="green")
    return Text(f"{got} (differs from official {expected}; re-saved copy?)", style="yellow")


def print_data_info(console: Console, flag: str) -> None:
    """Print the INFO entry for ``flag``, local file per size, and MD5 check against official."""
    info = dataset_info(flag)
    key = flag.lower()
    facts = Table(title=f"{key} ({info['python_class']})", title_justify="left", show_header=False)
    facts.add_column("field", style="bold")
    facts.add_column("value")
    labels = ", ".join(f"{k}={v}" for k, v in info["label"].items())
    n = info["n_samples"]
    for field, value in [
        ("description", info["description"]),
        ("task", info["task"]),
        ("spatial dims", f"{info['spatial_dims']}D"),
        ("channels", str(info["n_channels"])),
        ("classes", f"{len(info['label'])}: {labels}"),
        ("samples", f"train {n['train']}, val {n['val']}, test {n['test']}"),
        ("license", info["license"]),
    ]:
        facts.add_row(field, Text(str(value)))
    console.print(facts)

    files = Table(title="files", title_justify="left")
    for name in ("size", "file", "local path", "MD5", "official URL"):
        files.add_column(name, overflow="fold")
    for size in available_sizes(key):
        path = find_file(key, size)
        expected = official_md5(key, size)
        files.add_row(
            str(size),
            file_name(key, size),
            Text(str(path)) if path else Text("not found", style="red"),
            _md5_status(path, expected) if path else Text(expected or "-", style="dim"),
            Text(official_url(key, size) or "-"),
        )
    console.print(files)
