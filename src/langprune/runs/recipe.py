r"""llm-compressor recipes: every run folder's ``recipe.yaml``, and ``prune --recipe FILE``.

A recipe is llm-compressor's YAML schema: stages (``<name>_stage``) holding
modifier groups (``<name>_modifiers``) holding modifiers by class name with
their arguments. langprune writes one wherever llm-compressor's modifiers
express the run (Wanda, SparseGPT, OWL, N:M, GPTQ), with a comment naming
what langprune did beyond them (the calibration recipe, the contrastive
score, the mask selection), and reads one back into prune settings for the
modifiers it implements, refusing every other modifier and field by name.

Three conventions differ and are translated here, nowhere else:
llm-compressor's ``mask_structure: "N:M"`` prunes N of every M weights,
langprune's ``--sparsity n:m`` keeps n; llm-compressor spells the OWL
lambda ``owl_lmbda``; and its Wanda and SparseGPT modifiers (0.14) name a
layer matched by the class target ``Linear`` with a trailing dot
(``lm_head.``), so an exact name under ``ignore`` never matches and the
layer, the tied head and embedding included, is pruned. Their ignore list is
therefore written as anchored patterns, ``re:^lm_head\.?$``, which match
either spelling.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from ..compress.quantization import QuantSpec
from ..compress.sparsity import Sparsity
from ..errors import UserError
from ..storage import read_yaml_mapping
from .quantized import scheme, targets_and_ignore

RECIPE_FILE = "recipe.yaml"
# langprune's fixed SparseGPT/GPTQ sweep (compress.methods): a recipe asking for others is refused
BLOCK_SIZE, DAMPENING = 128, 0.01
SPARSITY_MODIFIERS = {"wanda": "WandaPruningModifier", "wanda-contrastive": "WandaPruningModifier"}
SPARSITY_MODIFIERS["sparsegpt"] = "SparseGPTModifier"
IMPLEMENTED = ("WandaPruningModifier", "SparseGPTModifier", "GPTQModifier")
# W4A16 and friends: compressed-tensors' preset schemes that langprune's grid covers
PRESETS = {"W4A16": "w4g128", "W4A16_ASYM": "w4g128,asym", "W8A16": "w8"}


def recipe_of(report: dict, model) -> dict | None:
    """The recipe of a run as a mapping, or None when a step has no llm-compressor modifier (magnitude, RIA...)."""
    method, quant = report["method"], QuantSpec.parse((report.get("quantization") or {}).get("spec"))
    layers = set(report["layers"])
    stages = {}
    if method != "none":
        if method not in SPARSITY_MODIFIERS:
            return None
        targets, ignore = targets_and_ignore(model, layers)
        sparsity = Sparsity.parse(report["sparsity"])
        args = {
            "sparsity": round(sparsity.ratio, 6),
            "mask_structure": f"{sparsity.m - sparsity.n}:{sparsity.m}" if sparsity.structured else "0:0",
            "targets": targets,
            "ignore": [name_pattern(name) for name in ignore],
        }
        profile = report.get("profile") or {}
        if profile.get("name") == "owl":
            settings = report.get("settings", {})
            owl_m = settings.get("owl_m")
            args.update(
                sparsity_profile="owl",
                owl_m=int(owl_m) if float(owl_m).is_integer() else owl_m,
                owl_lmbda=settings.get("owl_lambda"),
            )
        if method == "sparsegpt":
            args.update(block_size=BLOCK_SIZE, dampening_frac=DAMPENING)
        stages["sparsity_stage"] = {"sparsity_modifiers": {SPARSITY_MODIFIERS[method]: args}}
    if quant is not None:
        _, ignore = targets_and_ignore(model, layers)
        group = scheme(quant).model_dump(exclude_none=True)
        args = {
            "config_groups": {"group_0": group},
            "ignore": ignore,
            "block_size": BLOCK_SIZE,
            "dampening_frac": DAMPENING,
            "actorder": "static" if quant.act_order else None,
        }
        stages["quantization_stage"] = {"quantization_modifiers": {"GPTQModifier": args}}
    return stages or None


def name_pattern(name: str) -> str:
    """An ignore entry that matches one layer however llm-compressor spells its name (with or without a final dot)."""
    return f"re:^{re.escape(name)}\\.?$"


NAME_PATTERN = re.compile(r"re:\^((?:[\w-]|\\\.)+)\\\.\?\$")


def beyond_note(report: dict) -> list[str]:
    """What langprune did that the recipe's modifiers do not say: comment lines for the top of recipe.yaml."""
    notes = []
    calibration = report.get("calibration") or {}
    if calibration:
        notes.append(
            f"calibration: langprune recipe {calibration.get('recipe')!r}, {calibration.get('sequences')} x "
            f"{calibration.get('seqlen')} tokens, seed {calibration.get('seed')} (pass the same tokens as the dataset)"
        )
    if report.get("contrast") or report["method"] == "wanda-contrastive":
        contrast = (report.get("contrast") or {}).get("recipe", "a contrast set")
        notes.append(
            f"score: contrastive Wanda |W|*|X|*|X|/|Z| with Z from {contrast!r}; WandaPruningModifier uses |W|*|X|"
        )
    if report["method"] == "sparsegpt":
        selection = (report.get("settings") or {}).get("mask_selection") or "row"
        notes.append(
            f"mask selection: {selection} (SparseGPTModifier thresholds per block of {BLOCK_SIZE} columns, "
            "as langprune's --mask-selection block)"
        )
    if (report.get("profile") or {}).get("name") == "owl":
        notes.append("owl: langprune's block sparsities are in report.json (profile.block_sparsity)")
    if report.get("propagate") == "dense":
        notes.append("propagation: dense block outputs fed the next block (llm-compressor feeds compressed ones)")
    return notes


def recipe_text(report: dict, model) -> str | None:
    """recipe.yaml's text: a comment (what it covers and what langprune did beyond it), then the recipe."""
    recipe = recipe_of(report, model)
    if recipe is None:
        return None
    head = [
        "# llm-compressor recipe for this langprune run (llmcompressor.oneshot(recipe=...) reads it).",
        "# llm-compressor's mask_structure N:M prunes N of every M weights (langprune's --sparsity n:m keeps n).",
    ]
    head += [f"# beyond this recipe, {note}" for note in beyond_note(report)]
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


# Reading a recipe: modifier -> {field: what langprune does with it}
_SPARSITY_FIELDS = {"sparsity", "mask_structure", "sparsity_profile", "owl_m", "owl_lmbda", "targets", "ignore"}
_SWEEP_FIELDS = {"block_size", "dampening_frac", "offload_hessians", "sequential_update"}
FIELDS = {
    "WandaPruningModifier": _SPARSITY_FIELDS | {"sequential_update"},
    "SparseGPTModifier": _SPARSITY_FIELDS | _SWEEP_FIELDS | {"preserve_sparsity_mask"},
    "GPTQModifier": {"config_groups", "scheme", "targets", "ignore", "actorder"} | _SWEEP_FIELDS,
}


def modifiers_in(recipe: dict, where: str) -> list[tuple[str, dict]]:
    """(class name, arguments) of every modifier in a recipe mapping, in order; the schema checked on the way."""
    found = []
    for stage, groups in recipe.items():
        if not stage.endswith("_stage") or not isinstance(groups, dict):
            raise UserError(f"{where}: {stage!r} is not a recipe stage (a mapping named <name>_stage)")
        for group, modifiers in groups.items():
            if not group.endswith("_modifiers") or not isinstance(modifiers, dict):
                raise UserError(f"{where}: {stage}.{group} is not a modifier group (a mapping named <name>_modifiers)")
            for name, args in modifiers.items():
                found.append((name, args or {}))
    if not found:
        raise UserError(f"{where} holds no modifiers: expected <name>_stage: <name>_modifiers: <Modifier>: {{...}}")
    return found


def settings_from_recipe(path: Path) -> dict:
    """Prune settings (PruneSettings keys) from an llm-compressor recipe file; anything langprune would not do
    exactly as written is refused by name."""
    where = f"recipe {path}"
    recipe = read_yaml_mapping(Path(path), "recipe", "stages of modifiers")
    settings: dict = {"method": "none"}
    for name, args in modifiers_in(recipe, where):
        if name not in FIELDS:
            raise UserError(
                f"{where}: modifier {name} is not one langprune implements (it reads {', '.join(IMPLEMENTED)})"
            )
        if not isinstance(args, dict):
            raise UserError(f"{where}: {name}'s arguments must be a mapping")
        unknown = sorted(set(args) - FIELDS[name])
        if unknown:
            raise UserError(f"{where}: {name} has field {unknown[0]!r}, which langprune does not implement")
        _check_sweep(where, name, args)
        exclude = _exclude(where, name, args)
        if name == "GPTQModifier":
            settings["quantize"] = _quant_spec(where, args)
        else:
            if settings["method"] != "none":
                raise UserError(f"{where}: more than one sparsity modifier; langprune prunes once per run")
            settings.update(_sparsity_settings(where, name, args))
        if exclude:
            settings["exclude"] = sorted(set(settings.get("exclude", [])) | set(exclude))
    return settings


def _check_sweep(where: str, name: str, args: dict) -> None:
    if args.get("block_size", BLOCK_SIZE) != BLOCK_SIZE or args.get("dampening_frac", DAMPENING) != DAMPENING:
        raise UserError(
            f"{where}: {name} asks for block_size {args.get('block_size', BLOCK_SIZE)} and dampening_frac "
            f"{args.get('dampening_frac', DAMPENING)}; langprune sweeps with {BLOCK_SIZE} and {DAMPENING}"
        )
    if args.get("preserve_sparsity_mask"):
        raise UserError(f"{where}: {name}'s preserve_sparsity_mask is not implemented by langprune")


def _sparsity_settings(where: str, name: str, args: dict) -> dict:
    structure = str(args.get("mask_structure", "0:0"))
    match = re.fullmatch(r"(\d+):(\d+)", structure)
    if not match:
        raise UserError(f"{where}: {name} mask_structure {structure!r} is not N:M (0:0 for unstructured)")
    pruned, group = int(match.group(1)), int(match.group(2))
    if group:
        sparsity = f"{group - pruned}:{group}"
    elif isinstance(args.get("sparsity"), (int, float)) and not isinstance(args.get("sparsity"), bool):
        sparsity = f"{float(args['sparsity']):g}"
    else:
        raise UserError(f"{where}: {name} needs one number as sparsity (per-layer lists are not implemented)")
    settings = {"method": "wanda" if name == "WandaPruningModifier" else "sparsegpt", "sparsity": sparsity}
    if args.get("sparsity_profile") is not None:
        if str(args["sparsity_profile"]).lower() != "owl":
            raise UserError(f"{where}: {name} sparsity_profile {args['sparsity_profile']!r} is not owl")
        settings["profile"] = "owl"
        for ours, theirs in (("owl_m", "owl_m"), ("owl_lambda", "owl_lmbda")):
            if theirs in args:
                settings[ours] = float(args[theirs])
    return settings


def _quant_spec(where: str, args: dict) -> str:
    if ("scheme" in args) == ("config_groups" in args):
        raise UserError(f"{where}: GPTQModifier needs either scheme (e.g. W4A16) or config_groups, one of them")
    if "scheme" in args:
        preset = str(args["scheme"]).upper()
        if preset not in PRESETS:
            raise UserError(f"{where}: GPTQModifier scheme {args['scheme']!r} is not one of {', '.join(PRESETS)}")
        spec = PRESETS[preset]
    else:
        groups = args["config_groups"]
        if not isinstance(groups, dict) or len(groups) != 1:
            raise UserError(f"{where}: GPTQModifier config_groups must hold one group (langprune has one scheme)")
        spec = _spec_of_group(where, next(iter(groups.values())))
    order = args.get("actorder")
    if order not in (None, "static", False):
        raise UserError(f"{where}: GPTQModifier actorder {order!r}: langprune implements static or none")
    return spec + (",actorder" if order == "static" and "actorder" not in spec else "")


def _spec_of_group(where: str, group: dict) -> str:
    weights = (group or {}).get("weights") or {}
    if group.get("input_activations") or group.get("output_activations"):
        raise UserError(f"{where}: activation quantization is not implemented by langprune (weights only)")
    if weights.get("type", "int") != "int" or weights.get("strategy", "group") not in ("group", "channel"):
        raise UserError(f"{where}: GPTQModifier weights must be int with group or channel strategy")
    bits, size = weights.get("num_bits"), weights.get("group_size")
    text = f"w{bits}" + (f"g{size}" if weights.get("strategy", "group") == "group" and size else "")
    flags = ([] if weights.get("symmetric", True) else ["asym"]) + (
        ["actorder"] if weights.get("actorder") == "static" else []
    )
    return str(QuantSpec.parse(",".join([text, *flags])))


def _exclude(where: str, name: str, args: dict) -> list[str]:
    """``ignore`` as langprune exclude patterns (exact names); the head, which langprune never prunes, dropped."""
    targets = args.get("targets", ["Linear"])
    targets = [targets] if isinstance(targets, str) else targets
    if not set(targets) <= {"Linear", "Conv1D"}:
        raise UserError(f"{where}: {name} targets {targets}: langprune compresses the Linear layers of the blocks")
    ignore = args.get("ignore") or []
    patterns = []
    for entry in ignore:
        written = NAME_PATTERN.fullmatch(entry)
        if written:  # one layer, as name_pattern writes it
            entry = written.group(1).replace("\\.", ".")
        elif entry.startswith("re:"):
            if re.match(entry[3:], "lm_head"):
                continue
            raise UserError(
                f"{where}: {name} ignore {entry!r}: list layer names (or re:^name\\.?$); other patterns are not read"
            )
        if entry.split(".")[-1] != "lm_head":
            patterns.append(entry)
    return patterns
