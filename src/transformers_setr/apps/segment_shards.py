"""`setr segment` on several processes and nodes: the process group, each rank's share of the images, the per-rank
JSONL manifests merged into one, and the paged `index.html`.

Under `torchrun` or `accelerate launch` (WORLD_SIZE > 1) the processes form a gloo group through torch.distributed's
environment rendezvous. Only small Python objects cross it (the per-rank counts, a barrier): the model itself runs
independently in each process, so gloo serves GPU and CPU runs alike. Rank r segments images r, r + N, r + 2N, ...
of the one sorted input list (every rank expands the inputs identically), writes each image's outputs atomically
and appends one JSON line per image to its own manifest part; once all ranks are done, rank 0 interleaves the parts
back into input order (`manifest.jsonl`), writes `summary.json` and the index pages. Memory stays flat in the
number of images: no rank holds the records, the page writer holds one page at a time.
"""

import datetime
import html
import json
import os
import re
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import torch

from ..files import write_bytes_atomically

# Images per index page: a page of a few thousand overlays is already slow to open.
INDEX_PAGE_SIZE = 1000
MANIFEST = "manifest.jsonl"
SUMMARY = "summary.json"
# A rank that finishes early waits at the final barrier for the slowest one: as long as a share may take.
BARRIER_TIMEOUT = datetime.timedelta(days=7)
_PART = re.compile(r"^\.manifest-(\d+)-of-(\d+)\.jsonl\.part$")
# `files.write_bytes_atomically`'s temporary name: `.{name}.{pid}.tmp`
_TEMPORARY = re.compile(r"^\.(.+)\.\d+\.tmp$")

Item = TypeVar("Item")


class ProcessGroupError(RuntimeError):
    """The launched processes could not form one group (one line for the user)."""


@dataclass(frozen=True)
class Ranks:
    """This process's place among the launched ones (rank 0 of 1 when not launched by torchrun / accelerate)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, items: Sequence[Item]) -> list[Item]:
        """This rank's items: every `world_size`-th, from `rank` on (deterministic; sizes differ by at most one)."""
        return list(items[self.rank :: self.world_size])

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    def gather(self, value: Any) -> list[Any]:
        """`value` of every rank, in rank order (on every rank)."""
        if self.world_size == 1:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.world_size > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def start_process_group() -> Ranks:
    """The group of the processes a launcher started (its WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT), or a
    single process. `ProcessGroupError` when the launcher's variables do not form the group they announce."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched <= 1:
        return Ranks()
    try:
        torch.distributed.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    except (ValueError, RuntimeError, KeyError) as error:
        raise ProcessGroupError(
            f"launched as {launched} processes (WORLD_SIZE) but they cannot form a group: {str(error).splitlines()[0]}"
        ) from None
    ranks = Ranks(
        torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))
    )
    if ranks.world_size != launched:
        raise ProcessGroupError(
            f"launched as {launched} processes but they formed a group of {ranks.world_size}: each would segment "
            "the whole input"
        )
    return ranks


def remove_stale_temporaries(output: Path, targets: Iterable[Path]) -> int:
    """Delete the temporary files a killed run left behind (`write_bytes_atomically`'s `.{name}.{pid}.tmp`) for the
    output files `targets` (this rank's images: no other process of this run writes them); the count removed."""
    wanted = {path.resolve() for path in targets}
    removed = 0
    for path in output.rglob(".*.tmp"):
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and path.with_name(match.group(1)).resolve() in wanted:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


# ----------------------------------------------------------------------------------------------------------------
# Manifests


def manifest_part(output: Path, ranks: Ranks) -> Path:
    return output / f".manifest-{ranks.rank}-of-{ranks.world_size}.jsonl.part"


def merge_manifests(
    output: Path, ranks: Ranks, input_problems: Sequence[tuple[str, str]], class_names: dict[int, str]
) -> dict[str, Any]:
    """Rank 0, after the barrier: interleave the ranks' manifest parts back into input order as `manifest.jsonl`
    (written to a temporary name, then renamed), remove every part (also those of an earlier, killed run with
    another world size), and return the totals: counts by status and the pixels of each class over all images."""
    paths = [manifest_part(output, Ranks(rank, ranks.world_size)) for rank in range(ranks.world_size)]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise ProcessGroupError(
            f"the manifests of other ranks are not in --output ({', '.join(missing[:3])}): the nodes must share the "
            "output folder"
        )
    counts = {"segmented": 0, "skipped": 0, "failed": len(input_problems)}
    class_pixels = dict.fromkeys(class_names, 0)
    temporary = output / f".{MANIFEST}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as merged, ExitStack() as stack:
            for text, problem in input_problems:
                merged.write(json.dumps({"source": text, "status": "failed", "error": problem}) + "\n")
            parts = [stack.enter_context(open(path, encoding="utf-8")) for path in paths]
            for line in _interleaved(parts):
                record = json.loads(line)
                counts[record["status"]] += 1
                for entry in record.get("classes", ()):
                    class_pixels[entry["id"]] = class_pixels.get(entry["id"], 0) + entry["pixels"]
                merged.write(line if line.endswith("\n") else line + "\n")
        temporary.replace(output / MANIFEST)
    finally:
        temporary.unlink(missing_ok=True)
    for path in output.iterdir():
        if _PART.match(path.name):
            path.unlink(missing_ok=True)
    total = sum(class_pixels.values()) or 1
    return {
        **counts,
        "class_pixels": [
            {"id": i, "label": class_names.get(i, str(i)), "pixels": n, "share": n / total}
            for i, n in sorted(class_pixels.items(), key=lambda item: -item[1])
            if n
        ],
    }


def _interleaved(parts: Sequence[IO[str]]) -> Iterator[str]:
    """Line i of the input order is line i // N of part i % N (`Ranks.share`)."""
    while True:
        progressed = False
        for part in parts:
            line = part.readline()
            if line:
                progressed = True
                yield line
        if not progressed:
            return


def read_manifest(output: Path) -> Iterator[dict[str, Any]]:
    with open(output / MANIFEST, encoding="utf-8") as manifest:
        for line in manifest:
            yield json.loads(line)


# ----------------------------------------------------------------------------------------------------------------
# Index pages


def page_name(page: int) -> str:
    return "index.html" if page == 1 else f"index-{page}.html"


def write_index_pages(output: Path, summary: dict[str, Any], title: str, page_size: int | None = None) -> int:
    """`index.html` (and `index-2.html`, ... beyond `page_size` entries, default `INDEX_PAGE_SIZE`) from
    `manifest.jsonl`, one page in memory at a time; every page starts with the run's summary. Returns the number of
    pages."""
    page_size = page_size or INDEX_PAGE_SIZE
    total = summary["segmented"] + summary["skipped"] + summary["failed"]  # the manifest's lines
    pages = max(1, -(-total // page_size))
    page, entries = 1, []
    for record in read_manifest(output):
        entries.append(record)
        if len(entries) == page_size and page < pages:
            write_bytes_atomically(output / page_name(page), index_html(entries, title, summary, page, pages).encode())
            page, entries = page + 1, []
    write_bytes_atomically(output / page_name(page), index_html(entries, title, summary, page, pages).encode())
    return page


def index_html(
    records: Sequence[dict[str, Any]], title: str, summary: dict[str, Any], page: int = 1, pages: int = 1
) -> str:
    """A self-contained page: the run's summary (counts, the classes over all images), then each overlay of this page
    with its classes (share of the image), then the images of this page that failed."""
    cards, failed = [], []
    for record in records:
        if record["status"] == "failed":
            failed.append(f"<li><b>{html.escape(record['source'])}</b>: {html.escape(record['error'])}</li>")
            continue
        rows = "".join(
            f"<tr><td>{c['id']}</td><td>{html.escape(str(c['label']))}</td><td>{100 * c['share']:.1f}%</td></tr>"
            for c in record["classes"]
        )
        overlay = html.escape(urllib.parse.quote(record["overlay"]))
        labels = html.escape(urllib.parse.quote(record["labels"]))
        confidence = ""
        if record.get("confidence"):
            confidence = f' · <a href="{html.escape(urllib.parse.quote(record["confidence"]))}">confidence</a>'
        cards.append(
            f'<figure><a href="{overlay}"><img src="{overlay}" loading="lazy" alt="overlay of '
            f'{html.escape(record["name"])}"></a><figcaption><b>{html.escape(record["source"])}</b> '
            f"({record['width']}×{record['height']}, {html.escape(record['mode'])}) · "
            f'<a href="{labels}">label map</a>{confidence}'
            f"<table><tr><th>id</th><th>class</th><th>share</th></tr>{rows}</table></figcaption></figure>"
        )
    failures = f"<h2>Not segmented ({len(failed)})</h2><ul>{''.join(failed)}</ul>" if failed else ""
    overall = "".join(
        f"<tr><td>{c['id']}</td><td>{html.escape(str(c['label']))}</td><td>{100 * c['share']:.2f}%</td></tr>"
        for c in summary["class_pixels"][:20]
    )
    navigation = ""
    if pages > 1:
        links = [f'<a href="{page_name(page - 1)}">previous</a>'] if page > 1 else []
        links.append(f"page {page} of {pages}")
        links += [f'<a href="{page_name(page + 1)}">next</a>'] if page < pages else []
        navigation = f"<p>{' · '.join(links)}</p>"
    style = (
        "body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;vertical-align:top;margin:0 1em 1.5em 0;"
        "max-width:720px}img{max-width:100%}table{border-collapse:collapse;font-size:90%}"
        "td,th{padding:1px 8px;text-align:left}tr:nth-child(even){background:#f2f2f2}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<p>{summary['segmented'] + summary['skipped']} images ({summary['segmented']} segmented now, "
        f"{summary['skipped']} earlier), {summary['failed']} not segmented, {summary['world_size']} process(es). "
        f'Every record: <a href="{MANIFEST}">{MANIFEST}</a>, totals: <a href="{SUMMARY}">{SUMMARY}</a>.</p>'
        f"<details><summary>Classes over all images</summary><table><tr><th>id</th><th>class</th><th>share</th></tr>"
        f"{overall}</table></details>{navigation}{''.join(cards)}{failures}{navigation}</body></html>\n"
    )
