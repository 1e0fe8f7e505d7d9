"""``sshgateway flows list|show|compare``: the options, finding the state directory (or
the config that names it), and writing the chosen rendering to stdout or ``-o FILE``;
notes on skipped records go to stderr. Returns the exit status.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Protocol, TextIO

from gateway.config import ConfigError, load_config
from tools.flows.records import safe_text
from tools.flows.render_html import render_compare_html
from tools.flows.render_json import compare_json, list_json, show_json
from tools.flows.render_text import render_compare_text, render_list_text, render_show_text
from tools.flows.store import FlowError, FlowStore
from tools.jsonl_store import StoreReadError

DEFAULT_LIMIT = 20


class _IO(Protocol):
    stdout: TextIO
    stderr: TextIO


def setup_parser(p: argparse.ArgumentParser) -> None:
    """``sshgateway flows``: the subcommands and their options."""
    p.description = (
        "Read the flow records the gateway writes (one per connection leg): list recent "
        "flows, show one stage by stage, or compare two side by side."
    )
    sub = p.add_subparsers(dest="flows_command", required=True, metavar="SUBCOMMAND")

    def common(q: argparse.ArgumentParser, formats: tuple[str, ...]) -> None:
        source = q.add_mutually_exclusive_group(required=True)
        source.add_argument("--state-dir", help="the gateway's state directory")
        source.add_argument("--config", help="a config file (its state_dir is used)")
        q.add_argument("--format", choices=formats, default="text", help="output format")

    q = sub.add_parser("list", help="recent flows, newest first")
    common(q, ("text", "json"))
    q.add_argument("--limit", type=int, default=DEFAULT_LIMIT, help="how many (default 20)")
    q = sub.add_parser("show", help="one flow, stage by stage")
    common(q, ("text", "json"))
    q.add_argument("id", help="a flow ID or a unique prefix of one")
    q = sub.add_parser("compare", help="two flows side by side, aligned by stage")
    common(q, ("text", "json", "html"))
    q.add_argument("id1", help="flow A (ID or unique prefix)")
    q.add_argument("id2", help="flow B (ID or unique prefix)")
    q.add_argument("-o", "--output", help="write to this file instead of stdout")


def run(args: argparse.Namespace, io: _IO) -> int:
    """Run ``sshgateway flows ...``; returns the exit status."""
    try:
        config = None if args.state_dir else load_config(args.config)
    except ConfigError as e:
        print(e, file=io.stderr)
        return 1
    state_dir = args.state_dir if config is None else config.state_dir
    store_url = config.store.url if config is not None else None
    # A state directory that is not there is a typo (or the wrong config), not a gateway
    # that has recorded nothing yet: only a missing flows/ under it means "no records".
    if store_url is None and not Path(state_dir).is_dir():
        why = "is not a directory" if Path(state_dir).exists() else "does not exist"
        print(
            f"sshgateway flows: state directory {safe_text(str(state_dir))} {why}", file=io.stderr
        )
        return 1
    store = FlowStore.for_state_dir(state_dir)
    if store_url is not None:  # every instance's flows, from the shared store
        store.use_database(store_url, "flows")
    try:
        text = _dispatch(args, store)
    except (FlowError, StoreReadError) as e:
        _print_notes(store, io)
        print(f"sshgateway flows: {e}", file=io.stderr)
        return 1
    _print_notes(store, io)
    output = getattr(args, "output", None)
    if output:
        try:
            with open(output, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as e:
            print(f"sshgateway flows: {output}: {e.strerror or e}", file=io.stderr)
            return 1
    else:
        io.stdout.write(text)
    return 0


def _print_notes(store: FlowStore, io: _IO) -> None:
    for note in store.finish_notes():
        print(f"sshgateway flows: note: {note}", file=io.stderr)


def _dumps(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=True) + "\n"


def _dispatch(args: argparse.Namespace, store: FlowStore) -> str:
    if args.flows_command == "list":
        if args.limit < 1:
            raise FlowError("--limit must be at least 1")
        flows = store.recent(args.limit)
        if args.format == "json":
            return _dumps(list_json(flows))
        if not flows:
            return f"no flow records in {store.directory}\n"
        return render_list_text(flows)
    if args.flows_command == "show":
        flow, legs = store.find(args.id)
        if args.format == "json":
            return _dumps(show_json(flow, legs))
        return render_show_text(flow, legs)
    a, _ = store.find(args.id1)
    b, _ = store.find(args.id2)
    if args.format == "json":
        return _dumps(compare_json(a, b))
    if args.format == "html":
        return render_compare_html(a, b)
    return render_compare_text(a, b)
