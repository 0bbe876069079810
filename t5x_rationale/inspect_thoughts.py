"""Looking inside a Quiet-STaR model: each token of a text, its thought and what the thought did.

    python -m t5x_rationale.inspect_thoughts --gin_file=models/quiet_star_tiny.gin \
      --gin_file=runs/inspect_thoughts.gin --gin.CHECKPOINT_PATH="'/tmp/quiet_star/checkpoints'" \
      --gin.OUTPUT_DIR="'/tmp/quiet_star/inspect'" --gin.inspect_thoughts.text="'Tom has 3 apples.'"

Writes `thoughts.html` (the text with every token coloured by how much its thought changed
the log-probability of the true next tokens, and a table), `thoughts.png` (the same table as
an image) and `thoughts.json` (the numbers). Per token y[i]: the thought sampled just before
it (after y[i-1]), the mixing weight w of the prediction of y[i], delta_next = log p_mixed(y[i])
- log p_base(y[i]) and delta_future = the same summed over the n_t true tokens y[i..i+n_t-1].
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
from typing import Optional

import gin
import jax
import numpy as np

from t5x_rationale.data.run_inputs import load_vocabulary
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.inference.thought_scoring import ThoughtScorer, ThoughtScores
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import write_text_atomic


def piece_text(vocabulary, token_id: int) -> str:
    """A token as it reads in the text (SentencePiece's word-start mark shown as a space; a
    Hugging Face tokenizer's token decoded alone)."""
    model = vocabulary.tokenizer
    if hasattr(model, "id_to_piece"):
        return model.id_to_piece(int(token_id)).replace("\u2581", " ")
    return vocabulary.decode([int(token_id)])


def token_rows(scores: ThoughtScores, vocabulary, row: int = 0) -> list[dict]:
    """One dict per real token of `row`: token, thought, w, base/mixed log-probs and deltas."""
    out = []
    for i in np.flatnonzero(scores.valid[row]):
        thought_ids = [int(t) for t in scores.thoughts[row, i]]
        out.append(
            {
                "position": int(i),
                "token": piece_text(vocabulary, scores.targets[row, i]),
                "token_id": int(scores.targets[row, i]),
                "thought": "".join(piece_text(vocabulary, t) for t in thought_ids),
                "thought_ids": thought_ids,
                "mixing_weight": float(scores.mixing_weight[row, i]),
                "base_logp": float(scores.base_logp[row, i]),
                "mixed_logp": float(scores.mixed_logp[row, i]),
                "delta_next": float(scores.mixed_logp[row, i] - scores.base_logp[row, i]),
                "delta_future": float(scores.delta_future[row, i]),
            }
        )
    return out


def _colour(delta: float, scale: float) -> str:
    """Green for a helpful thought, red for a harmful one, white for none."""
    a = min(abs(delta) / scale, 1.0) if scale > 0 else 0.0
    return f"rgba(0,160,0,{a:.2f})" if delta >= 0 else f"rgba(210,0,0,{a:.2f})"


def _delta_scale(rows: list[dict]) -> float:
    """The largest |delta_future| of the rows: full colour / full bar length."""
    return max([abs(r["delta_future"]) for r in rows] + [1e-6])


def render_html(rows: list[dict], *, title: str, num_talk: int) -> str:
    """The text coloured by delta_future (hover for the thought), then the per-token table."""
    scale = _delta_scale(rows)
    spans = "".join(
        f'<span style="background:{_colour(r["delta_future"], scale)}" '
        f'title="{html.escape(_tooltip(r))}">'
        f"{html.escape(r['token'])}</span>"
        for r in rows
    )
    cells = "".join(
        f"<tr><td>{r['position']}</td><td><code>{html.escape(repr(r['token']))}</code></td>"
        f"<td><code>{html.escape(r['thought'])}</code></td><td>{r['mixing_weight']:+.3f}</td>"
        f"<td>{r['base_logp']:.3f}</td><td>{r['mixed_logp']:.3f}</td><td>{r['delta_next']:+.3f}</td>"
        f'<td style="background:{_colour(r["delta_future"], scale)}">'
        f"{r['delta_future']:+.3f}</td></tr>"
        for r in rows
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}} .text span{{white-space:pre}}
.text{{font-size:1.3em;line-height:2em}} table{{border-collapse:collapse}} td,th{{padding:2px 8px;
border-bottom:1px solid #ddd;text-align:left}}</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Each token is coloured by how much the thought before it changed the log-probability of the
next {num_talk} true tokens (green: raised, red: lowered; full colour = {scale:.3f} nats). Hover a
token for its thought.</p>
<p class="text">{spans}</p>
<table><tr><th>pos</th><th>token</th><th>thought before it</th><th>w</th><th>log p base</th>
<th>log p mixed</th><th>&Delta; next</th><th>&Delta; next {num_talk}</th></tr>{cells}</table>
</body></html>
"""


def _tooltip(row: dict) -> str:
    return (
        f"thought: {row['thought']!r}\nw = {row['mixing_weight']:+.3f}\n"
        f"delta next = {row['delta_next']:+.3f}\ndelta future = {row['delta_future']:+.3f}"
    )


def render_png(rows: list[dict], path: str, *, title: str) -> None:
    """The per-token table as an image: token, thought, w and a bar for delta_future.

    Needs matplotlib (the `viz` extra), imported here so the other entry points do not.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(
            "inspect_thoughts writes its PNG with matplotlib: pip install -e '.[viz]'"
        ) from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 0.8 + 0.25 * len(rows)))
    ax.set_xlim(0, 1)
    ax.set_ylim(len(rows), -1)
    ax.axis("off")
    scale = _delta_scale(rows)
    ax.text(0.0, -1, "token", weight="bold")
    ax.text(0.12, -1, "thought before it", weight="bold")
    ax.text(0.62, -1, "w", weight="bold")
    ax.text(0.70, -1, "delta next / future", weight="bold")
    for y, r in enumerate(rows):
        ax.text(0.0, y, repr(r["token"]), family="monospace", va="center")
        ax.text(0.12, y, repr(r["thought"])[:60], family="monospace", va="center")
        ax.text(0.62, y, f"{r['mixing_weight']:+.2f}", va="center")
        ax.text(0.70, y, f"{r['delta_next']:+.2f} / {r['delta_future']:+.2f}", va="center")
        width = 0.06 * r["delta_future"] / scale  # centred right of the numbers, clear of them
        ax.barh(y, width, left=0.93, height=0.6, color="green" if width >= 0 else "red")
    ax.set_title(title)
    partial = path + ".partial"
    fig.savefig(partial, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    os.replace(partial, path)


def inspect_thoughts(
    *,
    model_config=gin.REQUIRED,
    checkpoint_path: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    text: Optional[str] = None,
    text_file: Optional[str] = None,
    max_length: int = 256,
    thinking: ThinkingSpec = ThinkingSpec(),
    thought_temperature: float = 1.0,
    mesh: MeshConfig = MeshConfig(),
    vocabulary_path: Optional[str] = None,
    seed: int = 0,
) -> list[dict]:
    """Writes thoughts.html, thoughts.png and thoughts.json for `text` (or `text_file`).

    `thinking` is the training run's `@ThinkingSpec()`; thoughts are drawn at
    `thought_temperature` (default 1, as the reference's evaluation samples them; 0: argmax)
    and judged on the next `thinking.num_talk` tokens.
    """
    if (text is None) == (text_file is None):
        raise ValueError("give exactly one of inspect_thoughts.text and inspect_thoughts.text_file")
    if text_file is not None:
        if not os.path.isfile(text_file):
            raise FileNotFoundError(f"inspect_thoughts.text_file {text_file} does not exist")
        with open(text_file, encoding="utf-8") as f:
            text = f.read()
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    tokens = vocabulary.encode(text)[:max_length]
    if not tokens:
        raise ValueError("inspect_thoughts: the text has no tokens")
    scorer = ThoughtScorer(
        model_config,
        checkpoint_path,
        Partitioner(create_mesh(mesh)),
        spec=dataclasses.replace(thinking, sample_temperature=thought_temperature),
    )
    row = np.asarray([tokens], np.int32)
    scores = scorer.score(row, rng=jax.random.PRNGKey(seed), lengths=[len(tokens)])
    rows = token_rows(scores, vocabulary)
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
        title = f"Thoughts of {checkpoint_path} (step {scorer.step})"
        write_text_atomic(
            os.path.join(output_dir, "thoughts.html"),
            render_html(rows, title=title, num_talk=thinking.num_talk),
        )
        write_text_atomic(os.path.join(output_dir, "thoughts.json"), json.dumps(rows, indent=1))
        render_png(rows, os.path.join(output_dir, "thoughts.png"), title=title)
        print(
            f"inspect_thoughts: {len(rows)} tokens -> {output_dir}/thoughts.{{html,png,json}} "
            f"(checkpoint step {scorer.step})",
            flush=True,
        )
    return rows


def main() -> None:
    gin_main(inspect_thoughts)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
