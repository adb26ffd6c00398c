"""Write a Hub model card (README.md with metadata) for a saved Florence model folder.

Architecture facts (towers, sizes, parameter count) are read from the folder, evaluation figures from an
optional results JSON (as written by examples/evaluate_zero_shot.py), so a card never claims what was not measured:

    python model_cards/generate_model_card.py outputs/florence-tiny-shapes --repo-id you/florence-tiny-shapes \
        --results outputs/florence-tiny-shapes/eval_results.json --dataset florence-shapes
"""

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import AutoConfig

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import modeling_florence  # noqa: E402,F401  (registers the Florence model types)
from modeling_florence import FlorenceConfig, FlorenceTextConfig, FlorenceVisionConfig  # noqa: E402

TEMPLATE = Path(__file__).resolve().parent / "TEMPLATE.md"
PIPELINE_TAGS = {"florence": "zero-shot-image-classification", "florence_coswin": "image-feature-extraction",
                 "florence_text": "feature-extraction"}


def describe_vision(config: FlorenceVisionConfig) -> str:
    kind = "CoSwin (CvT convolutional embeddings)" if config.patch_embed == "conv" else "Swin (linear patches)"
    return (f"{kind}, embed_dim {config.embed_dim}, depths {config.depths}, heads {config.num_heads}, "
            f"window {config.window_size}")


def describe_text(config: FlorenceTextConfig) -> str:
    return (f"causal transformer, width {config.hidden_size}, {config.num_hidden_layers} layers, "
            f"{config.num_attention_heads} heads, {config.max_position_embeddings} positions")


def count_parameters(config) -> int:
    """Parameters of the architecture, counted on the meta device (no memory, no weights read)."""
    from transformers import AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(config)
    return sum(p.numel() for p in model.parameters())


def format_results(results_path: Path | None) -> str:
    if results_path is None:
        return "No evaluation results were supplied for this checkpoint."
    results = json.loads(Path(results_path).read_text())
    rows = [f"| {key} | {value:.2f} |" if isinstance(value, (int, float)) else f"| {key} | {value} |"
            for key, value in sorted(_flatten(results).items())]
    return "| metric | value |\n|---|---|\n" + "\n".join(rows)


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))
        else:
            flat[name] = value
    return flat


def render_card(model_dir: str | Path, repo_id: str, results: Path | None = None, dataset: str | None = None,
                license_name: str = "apache-2.0") -> str:
    config = AutoConfig.from_pretrained(model_dir)
    if config.model_type not in PIPELINE_TAGS:
        raise ValueError(f"{model_dir} holds a {config.model_type!r} model, not one of {sorted(PIPELINE_TAGS)}")
    vision = config.vision_config if isinstance(config, FlorenceConfig) else config
    text = config.text_config if isinstance(config, FlorenceConfig) else None
    is_vision = config.model_type in ("florence", "florence_coswin")
    parameters = count_parameters(config)
    fields = dict(
        license=license_name,
        pipeline_tag=PIPELINE_TAGS[config.model_type],
        tags="\n".join(f"- {tag}" for tag in ("florence", "unicl", "coswin", "vision", config.model_type)),
        datasets_block=f"datasets:\n- {dataset}\n" if dataset else "",
        title=f"{repo_id.split('/')[-1]} ({config.model_type})",
        description=("A Florence model: a CoSwin image encoder and a CLIP-style text encoder trained with the "
                     "UniCL contrastive loss (Yuan et al., 2021), in the Florence for Transformers library."),
        architecture=(config.architectures or [type(config).__name__.replace("Config", "Model")])[0],
        model_type=config.model_type,
        image_tower=describe_vision(vision) if is_vision else "–",
        text_tower=describe_text(text if text is not None else config) if config.model_type != "florence_coswin" else "–",
        parameters=f"{parameters / 1e6:.1f}M",
        image_size=vision.image_size if is_vision else "–",
        repo_id=repo_id,
        evaluation=format_results(results),
        limitations=("Florence's original weights were never released; this checkpoint was trained or converted "
                     "with this library. Check the evaluation section for what was measured on which data."),
    )
    return TEMPLATE.read_text().format(**fields)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("--repo-id", required=True)
    parser.add_argument("--results", type=Path, default=None, help="JSON of evaluation results to tabulate")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--output", type=Path, default=None, help="default: <model_dir>/README.md")
    args = parser.parse_args(argv)
    card = render_card(args.model_dir, args.repo_id, args.results, args.dataset, args.license)
    output = args.output or Path(args.model_dir) / "README.md"
    output.write_text(card)
    print(f"Wrote {output}")


if __name__ == "__main__":
    main()
