"""The review queue: which images most need a person."""

from __future__ import annotations

NEGATIVE = ""  # the group of untagged images (negatives)


def review_queue(rows: list[dict[str, str]], split: str, k: int) -> list[dict[str, str]]:
    """The `k` rows of per_image.csv (evaluate) that most need a person: lowest GT-free score first,
    spread over classes. Rows of `split` not corrected yet (an image with a GT mask is one of them:
    train_decoder trains on its pseudo-label, not on its GT) are grouped by tag (an image with
    several tags is in each of its groups); negatives form one more group, and only those the
    decoder painted objects on (score < 1: background share of their mask) are in it. Rounds take,
    from each group in turn (the group with the worst image first), its worst image not yet taken,
    until `k` are taken or none are left."""
    groups: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["split"] != split or row.get("gt") == "corrected":
            continue
        score = float(row["gt_free_score"])
        tags = row["tags"].split(";") if row["tags"] else [NEGATIVE]
        if tags == [NEGATIVE] and score >= 1.0:
            continue  # an all-background negative: nothing to correct
        for tag in tags:
            groups.setdefault(tag, []).append(row)
    for members in groups.values():
        members.sort(key=lambda r: (float(r["gt_free_score"]), r["id"]))
    order = sorted(groups, key=lambda g: (float(groups[g][0]["gt_free_score"]), g))
    chosen: dict[str, dict[str, str]] = {}
    while len(chosen) < k and any(groups.values()):
        for g in order:
            members = groups[g]
            while members and members[0]["id"] in chosen:
                members.pop(0)
            if members and len(chosen) < k:
                row = members.pop(0)
                chosen[row["id"]] = row
    return list(chosen.values())
