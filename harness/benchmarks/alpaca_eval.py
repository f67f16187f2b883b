"""AlpacaEval 2 (``tatsu-lab/alpaca_eval``, annotator ``weighted_alpaca_eval_gpt4_turbo``): data, judge prompt,
preference, scores. Pure functions: no network, no model. Protocol: ``shared/reference/benchmarks.md`` section 4.

Where this follows upstream (``alpaca-eval==0.6.6``, which must be installed):

- The judge prompt and decoding come from the installed package's annotator config and its template file. The
  template is filled like ``utils.make_prompts``: each ``{name}`` placeholder, in order of first appearance, is
  replaced once with plain ``str.replace(..., 1)`` (not ``str.format``: the template has literal braces). The
  filled text is then split like ``utils.prompt_to_chatml`` into stripped system and user messages.
- The inner join on the exact instruction and "identical outputs -> 1.5 without a judge call" are
  ``PairwiseAnnotator.annotate_head2head`` and ``_preprocess``.
- The position switch is ``RandomSwitchTwoColumnsProcessor`` with ``utils.random_seeded_choice``.
- The preference is ``completion_parsers.logprob_parser`` (numerator ``m``, denominators ``m``/``M``, not
  binarised), then ``3 - p`` on switched rows.
- Win rate, standard error, counts and discrete win rate are ``alpaca_eval.metrics.pairwise_to_winrate`` itself;
  ``avg_length`` is ``main.py``'s ``int(mean character length)``.
- ``length_controlled_minimal`` fits upstream's ``length_controlled_minimal`` GLM with upstream's own fitting code.
  It is **not** the official LC win rate, which needs hub files this project does not have (see its docstring).
- ``length_controlled_official`` runs upstream's official LC (``length_controlled_v1``) itself, given local copies
  of the hub files (``harness.benchmarks.download.fetch_alpaca_eval_lc_files``).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import math
import random
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from unittest import mock

from harness.benchmarks import find_file
from harness.errors import BenchError

SUBDIR = "benchmarks/alpaca_eval"  # where the files sit under a shared data folder (e.g. ../shared)
EVAL_SET_FILE = "gpt4_1106_preview_model_outputs.json"  # upstream results/gpt4_1106_preview/model_outputs.json
N_INSTRUCTIONS = 805
REFERENCE_GENERATOR = "gpt4_1106_preview"
ANNOTATOR = "weighted_alpaca_eval_gpt4_turbo"
# The judge call, as in the annotator's configs.yaml (a test checks that they agree).
JUDGE_DECODING = {"model": "gpt-4-1106-preview", "max_tokens": 1, "temperature": 1.0, "logprobs": True,
                  "top_logprobs": 5}
DRAW = 1.5  # preference of identical outputs; 1 = reference wins, 2 = evaluated model wins
# Answer length: upstream's model configs mostly ask for 2048 new tokens (CPU runs pass --max-new-tokens).
ANSWER_MAX_NEW_TOKENS = 2048
# The minimal LC fit cross-validates over 5 folds of instructions; below this it is not attempted.
LC_MIN_ROWS = 10

TopLogprobs = list[tuple[str, float]]
log = logging.getLogger(__name__)


# ---------------------------------------------------------------- data


def eval_set_path(root) -> Path:
    """``root`` is the AlpacaEval folder itself or a data folder holding ``benchmarks/alpaca_eval``."""
    return find_file(root, SUBDIR, EVAL_SET_FILE, "AlpacaEval eval set",
                     ", or put a copy of tatsu-lab/alpaca_eval results/gpt4_1106_preview/model_outputs.json there")


def load_eval_set(root) -> list[dict]:
    """The 805 ``{dataset, instruction, output, generator}`` rows with the reference outputs, in official order."""
    path = eval_set_path(root)
    try:
        rows = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchError(f"{path}:{e.lineno}: not valid JSON ({e.msg}).") from None
    if not isinstance(rows, list) or len(rows) != N_INSTRUCTIONS or not all(
            isinstance(r, dict) and isinstance(r.get("instruction"), str) and isinstance(r.get("output"), str)
            for r in rows):
        raise BenchError(f"{path}: expected a list of {N_INSTRUCTIONS} rows with 'instruction' and 'output' text; "
                         "the file is not the AlpacaEval 2 reference set. Replace it with the upstream file.")
    return rows


# ---------------------------------------------------------------- judge prompt


def is_switched(instruction: str, seed: int = 0) -> bool:
    """Upstream's position switch: whether the reference goes second (as ``M``). Not ``random.choice``: it consumes
    the generator differently and disagrees with the published annotations on about half of the rows."""
    return random.Random("is_switched_outputs" + instruction + str(seed)).choices([False, True], k=1)[0]


def needs_judge(output_1: str, output_2: str) -> bool:
    """Identical outputs are a draw (preference 1.5) and are never sent to the judge."""
    return output_1 != output_2


@functools.lru_cache(maxsize=1)
def annotator_config() -> tuple[dict, str]:
    """The installed package's annotator config and its prompt template text (read without importing the package)."""
    spec = importlib.util.find_spec("alpaca_eval")
    if spec is None or spec.origin is None:
        raise BenchError("AlpacaEval needs the alpaca-eval package for its judge prompt and metrics; install it "
                         "with `pip install alpaca-eval==0.6.6`.")
    import yaml

    configs = Path(spec.origin).parent / "evaluators_configs"
    config = yaml.safe_load((configs / ANNOTATOR / "configs.yaml").read_text(encoding="utf-8"))[ANNOTATOR]
    return config, (configs / config["prompt_template"]).read_text(encoding="utf-8")


def judge_messages(instruction: str, output_1: str, output_2: str) -> list[dict]:
    """System + user messages of the weighted annotator; ``output_1`` is shown as ``m``, ``output_2`` as ``M``.

    The outputs must already be in judged order (after the switch). Like upstream, placeholders are filled in the
    whole ChatML text before it is split, so text that itself contains ``{output_1}`` or ChatML markers is treated
    exactly as upstream treats it.
    """
    _, template = annotator_config()
    values = {"instruction": instruction, "output_1": output_1, "output_2": output_2}
    prompt = template
    for name in dict.fromkeys(re.findall(r"{([^ \s]+?)}", template)):
        prompt = prompt.replace("{" + name + "}", str(values[name]), 1)
    messages = []
    for block in prompt.strip().split("<|im_start|>")[1:]:
        role, _, rest = block.partition("\n")
        messages.append({"role": role.strip(), "content": rest.split("<|im_end|>", 1)[0].strip()})
    return messages


# ---------------------------------------------------------------- preference


def parse_raw_completion(raw: dict | None) -> TopLogprobs | None:
    """The first token's top log-probs from an OpenAI chat completion choice (or whole response); None if absent."""
    if raw and "choices" in raw:
        raw = raw["choices"][0]
    content = ((raw or {}).get("logprobs") or {}).get("content") or []
    if not content or content[0].get("top_logprobs") is None:
        return None
    return [(t["token"], float(t["logprob"])) for t in content[0]["top_logprobs"]]


def preference_from_top_logprobs(top: TopLogprobs | None, switched: bool) -> float:
    """``2 - P(m) / (P(m) + P(M))`` on the judged order, then ``3 - p`` if switched; in [1, 2], 2 = model wins.

    Only tokens exactly ``m`` and ``M`` among the returned alternatives count (a missing one has probability 0);
    NaN when neither is there or there are no log-probs. Computed in log space like ``logprob_parser``.
    """
    found = {tok: lp for tok, lp in (top or []) if tok in ("m", "M")}
    if not found:
        return math.nan
    lm, lM = found.get("m", -math.inf), found.get("M", -math.inf)
    top_lp = max(lm, lM)
    log_denominator = top_lp + math.log(math.exp(lm - top_lp) + math.exp(lM - top_lp))
    p = 2 - math.exp(lm - log_denominator)
    return 3 - p if switched else p


def judge_plan(eval_set: list[dict], model_outputs: list[dict], seed: int = 0) -> list[dict]:
    """Inner-join model outputs to the reference by exact instruction (reference order, as upstream's merge) and
    prepare each judge call: ``messages`` is None where the outputs are identical.

    Unmatched rows are dropped with a warning, as upstream does; exact duplicate rows count once.
    """
    by_instruction: dict[str, list[tuple[str, str]]] = {}
    for i, row in enumerate(model_outputs):
        if not isinstance(row.get("instruction"), str) or not isinstance(row.get("output"), str):
            raise BenchError(f"model outputs row {i}: needs 'instruction' and 'output' text, got fields {sorted(row)}.")
        entry = (row["output"], str(row.get("generator", "model")))
        if entry not in by_instruction.setdefault(row["instruction"], []):
            by_instruction[row["instruction"]].append(entry)
    plan = []
    for ref in eval_set:
        for output, generator in by_instruction.get(ref["instruction"], []):
            switched = is_switched(ref["instruction"], seed)
            first, second = (output, ref["output"]) if switched else (ref["output"], output)
            plan.append({
                "instruction": ref["instruction"], "dataset": ref.get("dataset"),
                "output_1": ref["output"], "generator_1": ref.get("generator", REFERENCE_GENERATOR),
                "output_2": output, "generator_2": generator, "switched": switched,
                "messages": judge_messages(ref["instruction"], first, second)
                if needs_judge(ref["output"], output) else None,
            })
    if not (len(plan) == len(eval_set) == len(model_outputs)):
        log.warning("AlpacaEval join: %d reference rows, %d model outputs, %d matched by exact instruction; "
                    "the rest are dropped.", len(eval_set), len(model_outputs), len(plan))
    return plan


def annotate(eval_set: list[dict], model_outputs: list[dict],
             judge_fn: Callable[[list[dict]], TopLogprobs | None], seed: int = 0) -> list[dict]:
    """One row per joined pair: ``output_1`` the reference, ``output_2`` the model (unswitched), ``preference`` in
    [1, 2] or NaN, ``switched``, and the judge's ``top_logprobs`` (judged order). ``judge_fn(messages)`` returns the
    first token's top log-probs, or None. To batch calls, run ``judge_plan`` first and make ``judge_fn`` a lookup."""
    rows = []
    for row in judge_plan(eval_set, model_outputs, seed):
        messages = row.pop("messages")
        top = judge_fn(messages) if messages is not None else None
        preference = preference_from_top_logprobs(top, row["switched"]) if messages is not None else DRAW
        rows.append({**row, "annotator": ANNOTATOR, "preference": preference,
                     "top_logprobs": [list(t) for t in top] if top is not None else None})
    return rows


# ---------------------------------------------------------------- scores


def _upstream(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise BenchError(f"AlpacaEval scoring uses {module} from the alpaca-eval package, which could not be "
                         f"imported ({e}); install it with `pip install alpaca-eval==0.6.6`.") from None


def summarize(preferences: list[float | None], model_outputs: list[dict]) -> dict:
    """AlpacaEval 2 win rate, standard error, counts and discrete win rate (upstream's ``pairwise_to_winrate``), the
    number of missing (NaN) preferences, and ``avg_length`` of all model outputs in characters (upstream's leaderboard).
    """
    prefs = [math.nan if p is None else float(p) for p in preferences]
    metrics = _upstream("alpaca_eval.metrics").pairwise_to_winrate(prefs)
    out = {k: int(v) if k.startswith("n_") else float(v) for k, v in metrics.items()}
    out["n_missing"] = len(prefs) - out["n_total"]
    lengths = [len(r["output"]) for r in model_outputs]
    out["avg_length"] = int(sum(lengths) / len(lengths)) if lengths else 0
    return out


def length_controlled(annotations: list[dict], lc_files: Mapping[str, Path] | None) -> dict:
    """The LC numbers of one row's annotations (``preference`` None where a judge call failed): the official LC
    when its hub files are at hand, over every answered row with the unjudged ones as NaN (upstream fits on the
    judged rows and averages its prediction over all of them), and the labelled minimal GLM on the judged rows."""
    rows = [{**a, "preference": math.nan if a["preference"] is None else a["preference"]} for a in annotations]
    judged = [a for a in rows if not math.isnan(a["preference"])]
    if len(judged) >= LC_MIN_ROWS:
        metrics = length_controlled_minimal(judged)
    else:
        metrics = {"lc_win_rate_minimal": None,
                   "lc_variant": f"length_controlled_minimal needs at least {LC_MIN_ROWS} judged rows; {len(judged)} here"}
    if lc_files and judged:  # its label names the official variant
        metrics.update(length_controlled_official(rows, lc_files))
    return metrics


def length_controlled_minimal(annotations: list[dict]) -> dict:
    """Upstream's ``length_controlled_minimal`` GLM: NOT the official length-controlled win rate.

    The official LC (``length_controlled_v1``) adds a per-instruction difficulty term and regularises toward the
    baseline with ``df_gamed.csv``; both files live only on the HF hub, and upstream's
    ``get_length_controlled_winrate`` downloads ``df_gamed.csv`` for every GLM, the minimal one included, so it
    cannot run offline. This does what that function does for ``glm_name="length_controlled_minimal"`` with the
    features it would build (``tanh`` of the length difference over its sd, and the model indicator), calling
    upstream's ``make_dmatrix_for_model`` and ``fit_LogisticRegressionCV`` (soft labels, L1, GroupKFold(5)), and
    predicts with no length difference. With no per-instruction term every prediction is the same number.
    ``annotations`` need ``output_1`` (reference), ``output_2`` (model) and ``preference``.
    """
    import pandas as pd
    import sklearn

    glm = _upstream("alpaca_eval.metrics.glm_winrate")
    info = glm.GLM_INFO["length_controlled_minimal"]
    df = pd.DataFrame(annotations)
    label = {"lc_variant": "length_controlled_minimal (not the official LC)"}
    if "generator_1" in df and df["generator_1"].equals(df.get("generator_2")):
        return {"lc_win_rate_minimal": 50.0, **label, "lc_minimal_weights": {}}  # the baseline against itself
    delta = df["output_1"].str.len() - df["output_2"].str.len()
    train = pd.DataFrame({"preference": df["preference"].astype(float).replace({0.0: DRAW}) - 1,
                          "std_delta_len": delta / delta.std(), "not_gamed_baseline": True})
    test = pd.DataFrame({"not_gamed_baseline": True, "std_delta_len": 0.0}, index=train.index)
    # config_context undoes the global metadata-routing switch upstream's fit sets. scikit-learn is pinned below
    # 1.8, whose deprecations (penalty=, the legacy LogisticRegressionCV attributes) upstream's fit still uses:
    # no warning to silence, and a test runs this fit with FutureWarnings raised as errors.
    with sklearn.config_context():
        x_train, x_test = glm.make_dmatrix_for_model(train, test, formula=info["formula"])
        x_train = x_train[x_train["preference"].notna()]
        model = glm.fit_LogisticRegressionCV(x_train, "preference", is_ytrue_proba=True, **info["kwargs"])
    predicted = model.predict_proba(x_test)[:, 1]
    return {"lc_win_rate_minimal": float(predicted.mean() * 100), **label,
            "lc_minimal_weights": {c: float(w) for c, w in zip(x_test.columns, model.coef_[0])}}


def length_controlled_official(annotations: list[dict], files: Mapping[str, Path]) -> dict:
    """The official length-controlled win rate (upstream's ``length_controlled_v1``), computed by upstream itself.

    This calls ``alpaca_eval.metrics.glm_winrate.get_length_controlled_winrate`` unmodified (features, the gamed
    rows of ``df_gamed.csv`` with weight 0.2 / 2 to regularise toward the baseline, the soft-label L1
    ``LogisticRegressionCV``, prediction at zero length difference). Upstream fetches ``df_gamed.csv`` inside that
    function with ``huggingface_hub.hf_hub_download`` and takes no path, so for the duration of the call the
    ``hf_hub_download`` name in upstream's module is replaced by a lookup in ``files`` (``{file name: path}``,
    e.g. from ``download.fetch_alpaca_eval_lc_files``): same code, local data, no network. Weights are not saved
    (``save_weights_dir=None``; upstream's default writes into the installed package); no baseline is passed, as
    in upstream's leaderboard, so ``instruction_difficulty.csv`` (used only to predict against another baseline)
    is not read; the per-instruction difficulty comes from ``df_gamed.csv``.

    Upstream looks the difficulty up by the annotations' row position, so rows must be the 805 in eval-set order,
    or carry their eval-set position in an ``index`` field (then passed to upstream as its row index). Rows with no
    preference are kept, as upstream keeps them: left out of the fit, in the predicted mean.
    """
    import hashlib

    import pandas as pd
    import sklearn

    glm = _upstream("alpaca_eval.metrics.glm_winrate")
    paths = {name: Path(p) for name, p in files.items()}
    gamed = paths.get("df_gamed.csv")
    if gamed is None or not gamed.is_file():
        raise BenchError(f"The official AlpacaEval LC needs df_gamed.csv (HF dataset tatsu-lab/alpaca_eval); got "
                         f"{gamed or 'none'}. Without it only length_controlled_minimal can be computed.")
    n_instructions = pd.read_csv(gamed, usecols=["index"])["index"].nunique()
    df = pd.DataFrame(annotations)
    df["preference"] = df["preference"].astype(float)
    if "index" in df:
        df = df.set_index("index")  # upstream's reset_index() turns it back into the "index" column it reads
    elif len(df) != n_instructions:
        raise BenchError(f"The official AlpacaEval LC looks instruction difficulty up by row position: it needs "
                         f"all {n_instructions} annotations in eval-set order (or an 'index' field), not {len(df)}.")

    def local_file(repo_id: str, filename: str, **_) -> str:
        if repo_id != "tatsu-lab/alpaca_eval" or filename not in paths:
            raise BenchError(f"Upstream's LC asked for {repo_id}/{filename}, which was not given.")
        return str(paths[filename])

    # config_context undoes the global metadata-routing switch upstream's fit sets (scikit-learn pinned as above).
    with mock.patch.object(glm, "hf_hub_download", local_file), sklearn.config_context():
        metrics = glm.get_length_controlled_winrate(df, glm_name="length_controlled_v1", save_weights_dir=None,
                                                    is_add_glm_preference_inplace=False)
    return {"lc_win_rate": float(metrics["length_controlled_winrate"]),
            "lc_standard_error": float(metrics["lc_standard_error"]),
            "lc_variant": "length_controlled_v1 (official)",
            "lc_df_gamed_sha256": hashlib.sha256(gamed.read_bytes()).hexdigest()}
