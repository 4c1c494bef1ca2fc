#!/usr/bin/env python3
"""Carries forward what a partial benchmark run did not measure.

`bash bench/run.sh --scenarios "a b" --keep` re-runs only some scenarios; this script then adds
to the new RESULTS.md the sections and target rows of the previous one that the run did not
produce again, each marked with the run they come from, so a partial run never silently drops
figures and never passes old figures off as new.

Usage: keep-results.py OLD_RESULTS NEW_RESULTS (NEW_RESULTS is rewritten in place).
"""

import re
import sys


def split(text):
    """(preamble, {title: body}, [titles in order]) of a RESULTS.md."""
    parts = re.split(r"^## ", text, flags=re.M)
    sections, order = {}, []
    for part in parts[1:]:
        title, _, body = part.partition("\n")
        sections[title.strip()] = body
        order.append(title.strip())
    return parts[0], sections, order


def generated(preamble):
    m = re.search(r"on (\d{4}-\d\d-\d\d \d\d:\d\d UTC)", preamble)
    c = re.search(r"commit (\w+)", preamble)
    return f"{m.group(1) if m else 'an earlier run'}, commit {c.group(1) if c else 'unknown'}"


def machine(preamble):
    m = re.search(r"^\| machine \| (.*?) \|$", preamble, flags=re.M)
    return m.group(1) if m else None


def target_rows(body):
    return [l for l in body.splitlines() if l.startswith("| ") and not l.startswith("| target")]


def main(old_path, new_path):
    try:
        old = open(old_path, encoding="utf-8").read()
    except FileNotFoundError:
        return
    new = open(new_path, encoding="utf-8").read()
    old_pre, old_sections, old_order = split(old)
    new_pre, new_sections, new_order = split(new)
    origin = generated(old_pre)
    # Figures from another machine are not comparable with this run's: say which one.
    if machine(old_pre) and machine(old_pre) != machine(new_pre):
        origin += f", on {machine(old_pre)}"
    # Targets: the new rows, then the old rows whose target was not measured again.
    if "Targets" in old_sections and "Targets" in new_sections:
        measured = {r.split(" | ")[0] for r in target_rows(new_sections["Targets"])}
        kept = [
            r.rstrip().rstrip("|").rstrip() + f" (kept from {origin}) |"
            for r in target_rows(old_sections["Targets"])
            if r.split(" | ")[0] not in measured and "(kept from" not in r
        ] + [r for r in target_rows(old_sections["Targets"]) if "(kept from" in r and r.split(" | ")[0] not in measured]
        if kept:
            body = new_sections["Targets"].rstrip("\n") + "\n" + "\n".join(kept) + "\n\n"
            new_sections["Targets"] = body
    # Sections the run did not produce, in their old place relative to the new ones.
    order = list(new_order)
    for i, title in enumerate(old_order):
        if title in new_sections:
            continue
        body = old_sections[title]
        if not body.lstrip().startswith("_Kept from"):
            body = f"\n_Kept from the run of {origin}: not re-run this time._\n" + body
        new_sections[title] = body
        before = [t for t in old_order[:i] if t in order]
        order.insert(order.index(before[-1]) + 1 if before else len(order), title)
    out = new_pre + "".join(f"## {t}\n{new_sections[t]}" for t in order)
    open(new_path, "w", encoding="utf-8").write(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
