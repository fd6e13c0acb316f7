"""The assembly summary table: parameters, trainable parameters per stage and tokens per item."""

from __future__ import annotations

from mmcore.assembly._assemble import Assembly

__all__ = ["summary_table"]


def _n(value: int) -> str:
    return f"{value:,}"


def summary_table(assembly: Assembly) -> str:
    """Component, type, distribution + version, parameters, trainable per stage, tokens per item."""
    stages = list(assembly.trainable)
    header = ["component", "type", "distribution", "parameters", *[f"train:{s}" for s in stages], "tokens/item"]
    rows = []
    per_projector: dict[str, dict[str, int]] = {}  # token counts are per modality (CLIP: image N, video T + N)
    for modality, count in assembly.tokens_per_item.items():
        per_projector.setdefault(f"projectors.{assembly.model.modality_encoder[modality]}", {})[modality] = count
    tokens = {name: str(next(iter(counts.values()))) if len(counts) == 1 else
              ", ".join(f"{m} {n}" for m, n in counts.items()) for name, counts in per_projector.items()}
    for name, resolved in assembly.resolved.items():
        rows.append([name, resolved.name, f"{resolved.distribution} {resolved.version}",
                     _n(assembly.parameters[name]), *[_n(assembly.trainable[s][name]) for s in stages],
                     tokens.get(name, "")])
    total = sum(assembly.parameters.values())
    rows.append(["total", "", "", _n(total), *[_n(sum(assembly.trainable[s].values())) for s in stages], ""])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    numeric = {3, *range(4, 4 + len(stages)), len(header) - 1}

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).rjust(w) if i in numeric else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *[line(r) for r in rows[:-1]], rule, line(rows[-1])])
