"""Arena-Hard v0.1: shared data plumbing, judge messages, verdicts, battle weights, and the score and its
bootstrap interval against an independent Bradley-Terry fit done the way upstream does it."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from harness.benchmarks import arena_hard
from harness.errors import BenchError

REGEX = r"\[\[([AB<>=]+)\]\]"
LABELS = ["A>>B", "A>B", "A=B", "B>A", "B>>A"]


@pytest.fixture(scope="module")
def ah_dir(shared_dir):
    return shared_dir / "benchmarks" / "arena_hard_v0.1"


@pytest.fixture(scope="module")
def config(ah_dir):
    return arena_hard.load_judge_config(ah_dir)


# ---------------------------------------------------------------- data


def test_judge_config(config):
    assert config["baseline_model"] == "gpt-4-0314"
    assert config["judge_model"] == "gpt-4-1106-preview"
    assert config["regex_pattern"] == REGEX
    assert (config["temperature"], config["max_tokens"], config["number_of_judgment_attempts"]) == (0, 4096, 2)
    assert len(config["system_prompt"]) == 1729
    assert all(f"[[{label}]]" in config["system_prompt"] for label in LABELS)
    assert len(config["prompt_template"]) == 1


def test_questions_and_answers_join(ah_dir):
    questions = arena_hard.load_questions(ah_dir)
    assert len(questions) == 500
    uids = {q["uid"] for q in questions}
    for model in ("gpt-4-0314", "gpt-4-0613", "gpt-3.5-turbo-0125"):
        answers = arena_hard.load_answers(ah_dir, model)
        assert len(answers) == 500 and set(answers) == uids, model
        assert all(isinstance(a, str) and a for a in answers.values())
    clusters = pd.Series([q["cluster"] for q in questions]).value_counts()
    assert len(clusters) == 250 and set(clusters) == {2}


def test_missing_files_raise_bench_error(tmp_path, ah_dir):
    with pytest.raises(BenchError, match="question.jsonl"):
        arena_hard.load_questions(tmp_path)
    with pytest.raises(BenchError, match="--data-dir"):
        arena_hard.load_judge_config(tmp_path)
    with pytest.raises(BenchError, match="gpt-4-0613"):  # names the answer files that are there
        arena_hard.load_answers(ah_dir, "no-such-model")
    (tmp_path / "model_answer").mkdir()
    (tmp_path / "model_answer" / "m.jsonl").write_text('{"uid": "x", "choices": []}\n')
    with pytest.raises(BenchError, match="schema"):
        arena_hard.load_answers(tmp_path, "m")


# ---------------------------------------------------------------- judge messages and games


def test_judge_messages_fill_the_template(config, ah_dir):
    question = arena_hard.load_questions(ah_dir)[0]
    messages = arena_hard.judge_messages(config, question, "ANSWER-OF-A", "ANSWER-OF-B")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == config["system_prompt"]
    template = config["prompt_template"][0]
    expected = (template.replace("{question_1}", question["prompt"]).replace("{answer_1}", "ANSWER-OF-A")
                .replace("{answer_2}", "ANSWER-OF-B"))
    assert messages[1]["content"] == expected
    user = messages[1]["content"]
    assert user.index(question["prompt"]) < user.index("ANSWER-OF-A") < user.index("ANSWER-OF-B")


def test_games_swap_positions():
    (a1, b1), (a2, b2) = arena_hard.games({"prompt": "q"}, "BASE", "MODEL")
    assert (a1, b1, a2, b2) == ("BASE", "MODEL", "MODEL", "BASE")


# ---------------------------------------------------------------- verdicts


@pytest.mark.parametrize("text, expected", [
    ("My final verdict is: [[A>>B]]", ("A>>B", False)),
    ("Assistant B is slightly better: [[B>A]]", ("B>A", False)),
    ("First [[A>B]], then on reflection [[B>A]]", (None, False)),  # two different labels: no verdict, no retry
    ("[[A=B]] ... so again [[A=B]]", ("A=B", False)),  # the same label twice is one label
    ("Both answers are fine.", (None, True)),  # no label: ask once more
    ("[A>B]", (None, True)),  # single brackets do not count in v0.1
])
def test_parse_verdict(text, expected):
    assert arena_hard.parse_verdict(text, REGEX) == expected


def test_run_game_retries_once_without_a_label(config):
    seen = []
    replies = iter(["I think A is more thorough.", "My final verdict: [[A>B]]"])

    def judge(messages):
        seen.append(messages)
        return next(replies)

    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    out = arena_hard.run_game(judge, messages, config["regex_pattern"], config["number_of_judgment_attempts"])
    assert out["verdict"] == "A>B" and out["calls"] == 2
    assert out["judgment"] == "\nI think A is more thorough.\nMy final verdict: [[A>B]]"
    assert seen[0] == messages
    assert seen[1][:2] == messages and seen[1][2] == {"role": "assistant", "content": "I think A is more thorough."}
    assert seen[1][3]["role"] == "user" and "verdict" in seen[1][3]["content"]


def test_run_game_gives_up_after_two_calls_and_stops_at_a_label():
    calls = []
    out = arena_hard.run_game(lambda m: calls.append(m) or "no label", [{"role": "user", "content": "U"}], REGEX)
    assert out["verdict"] is None and len(calls) == 2
    calls.clear()
    out = arena_hard.run_game(lambda m: calls.append(m) or "[[B>>A]]", [{"role": "user", "content": "U"}], REGEX)
    assert out["verdict"] == "B>>A" and len(calls) == 1


# ---------------------------------------------------------------- battles


# Game 2 has the model as A, so its labels read directly; game 1 has the model as B, so they mirror.
GAME2 = {"A>>B": ["win"] * 3, "A>B": ["win"], "A=B": ["tie"], "B>A": ["loss"], "B>>A": ["loss"] * 3}
MIRROR = {"A>>B": "B>>A", "A>B": "B>A", "A=B": "A=B", "B>A": "A>B", "B>>A": "A>>B"}


@pytest.mark.parametrize("label", LABELS)
def test_battle_weights(label):
    assert arena_hard.battles(None, label) == GAME2[label]
    assert arena_hard.battles(MIRROR[label], None) == GAME2[label]
    assert arena_hard.battles(MIRROR[label], label) == GAME2[label] * 2


def test_battles_drop_missing_and_unknown_verdicts():
    assert arena_hard.battles(None, None) == []
    assert arena_hard.battles("A<B", "A>>>B") == []
    assert arena_hard.battles("B>A", "B>>A") == ["win", "loss", "loss", "loss"]  # game 1's rows first


def test_score_by_hand():
    rows = arena_hard.battles("B>>A", "A=B") + arena_hard.battles("A>B", "B>>A")
    # 3 strong wins, 1 tie, 1 weak loss, 3 strong losses: (3 + 0.5) / 8
    assert arena_hard.score(rows) == pytest.approx(100 * 3.5 / 8)
    with pytest.raises(BenchError):
        arena_hard.score([])


# ---------------------------------------------------------------- independent Bradley-Terry, as upstream fits it


def _verdicts(rng, probs, n):
    """n questions; each game's label drawn with ``probs`` over (model much better, better, tie, worse, much worse),
    written in that game's positions (model is B in game 1, A in game 2)."""
    model_view = ["M>>", "M>", "=", "<M", "<<M"]
    as_b = dict(zip(model_view, ["B>>A", "B>A", "A=B", "A>B", "A>>B"]))
    as_a = dict(zip(model_view, ["A>>B", "A>B", "A=B", "B>A", "B>>A"]))
    draws = rng.choice(5, size=(n, 2), p=probs)
    return [(as_b[model_view[g1]], as_a[model_view[g2]]) for g1, g2 in draws]


def _upstream_table(verdicts):
    """The battle table as show_result.py builds it: model_a = baseline, model_b = model, >> repeated 3 times."""
    out = []
    for g1, g2 in verdicts:
        w1 = {"A>>B": ("model_a", 3), "A>B": ("model_a", 1), "A=B": ("tie", 1), "B>A": ("model_b", 1),
              "B>>A": ("model_b", 3)}[g1]
        w2 = {"A>>B": ("model_b", 3), "A>B": ("model_b", 1), "A=B": ("tie", 1), "B>A": ("model_a", 1),
              "B>>A": ("model_a", 3)}[g2]
        for winner, weight in (w1, w2):
            out += [{"model_a": "baseline", "model_b": "model", "winner": winner}] * weight
    return pd.DataFrame(out)


def _bt_elo(df):
    """compute_mle_elo of one model against the baseline: [baseline, model] (the joint fit below, two columns)."""
    elo = _bt_elo_joint(df)
    return np.array([elo["baseline"], elo["model"]])


def _win_rate(elo_model, elo_baseline=1000.0):
    return 100 / (1 + 10 ** ((elo_baseline - elo_model) / 400))


def _flat(verdicts):
    return [b for g1, g2 in verdicts for b in arena_hard.battles(g1, g2)]


@pytest.mark.parametrize("probs", [[0.1, 0.2, 0.3, 0.25, 0.15], [0.02, 0.08, 0.2, 0.4, 0.3], [0.4, 0.3, 0.1, 0.1, 0.1]])
def test_score_equals_bradley_terry_fit(probs):
    verdicts = _verdicts(np.random.default_rng(7), probs, 300)
    elo = _bt_elo(_upstream_table(verdicts))
    assert arena_hard.score(_flat(verdicts)) == pytest.approx(_win_rate(elo[1]), abs=1e-4)


def test_bootstrap_interval_equals_upstream_bootstrap():
    verdicts = _verdicts(np.random.default_rng(3), [0.05, 0.15, 0.3, 0.3, 0.2], 120)
    table = _upstream_table(verdicts)
    state = np.random.get_state()
    np.random.seed(42)  # upstream: np.random.seed(42), then battles.sample(frac=1.0, replace=True) per round
    elos = [_bt_elo(table.sample(frac=1.0, replace=True))[1] for _ in range(100)]
    np.random.set_state(state)
    expected = (_win_rate(np.percentile(elos, 2.5)), _win_rate(np.percentile(elos, 97.5)))
    lower, upper = arena_hard.bootstrap_interval(_flat(verdicts))
    assert (lower, upper) == pytest.approx(expected, abs=1e-4)
    assert lower < arena_hard.score(_flat(verdicts)) < upper


def test_known_win_probability_is_recovered():
    # Weight-1 verdicts only, so battle rows are independent: per game the model wins 30%, ties 20%, loses 50%,
    # a true score of 100 * (0.3 + 0.5 * 0.2) = 40 and a row variance of 0.3 + 0.25 * 0.2 - 0.4 ** 2 = 0.19.
    truth, se = 40.0, 100 * math.sqrt(0.19 / 1000)  # 500 questions x 2 games
    rows = _flat(_verdicts(np.random.default_rng(11), [0.0, 0.3, 0.2, 0.5, 0.0], 500))
    assert len(rows) == 1000
    lower, upper = arena_hard.bootstrap_interval(rows)
    assert abs(arena_hard.score(rows) - truth) < 3 * se
    assert lower < truth < upper
    assert 0.75 < (upper - lower) / (2 * 1.96 * se) < 1.25


def test_weighted_verdicts_converge_to_the_weighted_share():
    # With >> verdicts the score estimates the weighted share E[3Ws + Ww + T/2] / E[3Ws + Ww + T + Lw + 3Ls]:
    # here (3 * .05 + .25 + .5 * .2) / (3 * .05 + .25 + .2 + .3 + 3 * .2) = 1/3.
    rows = _flat(_verdicts(np.random.default_rng(11), [0.05, 0.25, 0.2, 0.3, 0.2], 4000))
    assert arena_hard.score(rows) == pytest.approx(100 / 3, abs=2.0)


def test_bootstrap_is_seeded():
    rows = _flat(_verdicts(np.random.default_rng(5), [0.1, 0.2, 0.4, 0.2, 0.1], 50))
    assert arena_hard.bootstrap_interval(rows) == arena_hard.bootstrap_interval(rows, rounds=100, seed=42)
    assert arena_hard.bootstrap_interval(rows) != arena_hard.bootstrap_interval(rows, seed=43)


def test_perfect_separation():
    assert arena_hard.score(["win"] * 30) == 100.0 and arena_hard.score(["loss"] * 30) == 0.0
    assert arena_hard.bootstrap_interval(["win"] * 30) == (100.0, 100.0)
    assert arena_hard.bootstrap_interval(["loss"] * 30) == (0.0, 0.0)
    lower, upper = arena_hard.bootstrap_interval(["win"] * 29 + ["loss"])
    assert 80 < lower < 100 and upper == 100.0


# ---------------------------------------------------------------- joint scoring, as upstream's show_result.py
# Reference: lmarena/arena-hard-auto@3071ef9 (Apache-2.0), show_result.py (battles of every judgment file in one
# table) and utils_math.py (compute_mle_elo over all models, get_bootstrap_result resampling the whole table
# after np.random.seed(42)); re-stated below with sklearn as upstream fits it.


def _joint_table(by_model: dict) -> pd.DataFrame:
    frames = []
    for model, verdicts in by_model.items():
        t = _upstream_table(verdicts)
        t["model_b"] = model
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def _bt_elo_joint(df) -> pd.Series:
    """compute_mle_elo with every model in one design matrix, anchored at the baseline."""
    models = pd.concat([df["model_a"], df["model_b"]]).unique()
    index = pd.Series(np.arange(len(models)), index=models)
    df = pd.concat([df, df], ignore_index=True)
    n = len(df)
    X = np.zeros([n, len(models)])
    X[np.arange(n), index[df["model_a"]].to_numpy()] = math.log(10)
    X[np.arange(n), index[df["model_b"]].to_numpy()] = -math.log(10)
    Y = np.zeros(n)
    Y[(df["winner"] == "model_a").to_numpy()] = 1.0
    tie = (df["winner"] == "tie").to_numpy().copy()
    tie[n // 2:] = False
    Y[tie] = 1.0
    lr = LogisticRegression(fit_intercept=False, C=np.inf, tol=1e-8, max_iter=1000).fit(X, Y)
    elo = 400 * lr.coef_[0] + 1000
    elo = elo + 1000 - elo[index["baseline"]]
    return pd.Series(elo, index=models)


def test_joint_bootstrap_equals_upstreams_joint_bootstrap():
    rng = np.random.default_rng(21)
    by_model = {"a": _verdicts(rng, [0.05, 0.15, 0.3, 0.3, 0.2], 60),
                "b": _verdicts(rng, [0.2, 0.3, 0.2, 0.2, 0.1], 40),
                "c": _verdicts(rng, [0.0, 0.1, 0.2, 0.4, 0.3], 50)}
    table = _joint_table(by_model)
    state = np.random.get_state()
    np.random.seed(42)
    rounds = [_bt_elo_joint(table.sample(frac=1.0, replace=True)) for _ in range(100)]
    np.random.set_state(state)
    ours = arena_hard.joint_bootstrap({m: _flat(v) for m, v in by_model.items()})
    for model in by_model:
        elos = [r[model] for r in rounds]
        expected = (_win_rate(np.percentile(elos, 2.5)), _win_rate(np.percentile(elos, 97.5)))
        assert ours[model] == pytest.approx(expected, abs=1e-3), model
    # and not what each model alone gives: the draw is shared
    assert any(ours[m] != pytest.approx(arena_hard.bootstrap_interval(_flat(v)), abs=1e-3)
               for m, v in by_model.items())


def test_joint_bootstrap_of_one_model_is_the_per_row_interval():
    rows = _flat(_verdicts(np.random.default_rng(4), [0.1, 0.2, 0.4, 0.2, 0.1], 40))
    assert arena_hard.joint_bootstrap({"only": rows})["only"] == pytest.approx(arena_hard.bootstrap_interval(rows))


def test_a_model_that_only_loses_gets_a_clear_interval_beside_others():
    rows = _flat(_verdicts(np.random.default_rng(6), [0.1, 0.2, 0.4, 0.2, 0.1], 30))
    out = arena_hard.joint_bootstrap({"loser": ["loss"] * 20, "other": rows})
    assert out["loser"] == (0.0, 0.0)
    assert 0.0 < out["other"][0] < out["other"][1] < 100.0


def test_published_judgments_are_read_by_judge_and_skip_the_runs_rows(tmp_path):
    folder = tmp_path / "model_judgment" / "judge-x"
    folder.mkdir(parents=True)
    rows = [{"question_id": "q1", "model": "pub", "games": [{"score": "B>A"}, {"score": "A>>B"}]},
            {"question_id": "q2", "model": "pub", "games": [{"score": None}, {"score": "A=B"}]},
            {"question_id": "q1", "model": "sft", "games": [{"score": "A>B"}, {"score": "B>A"}]}]
    (folder / "pub.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = arena_hard.load_published_battles(tmp_path, "judge-x", skip={"sft"})
    # pub: game 1 B>A (model is B) a win; game 2 A>>B (model is A) three wins; then a tie
    assert got == {"pub": ["win", "win", "win", "win", "tie"]}
    assert arena_hard.load_published_battles(tmp_path, "another-judge") == {}
    (folder / "bad.jsonl").write_text('{"model": "m"}\n')
    with pytest.raises(BenchError, match="bad.jsonl:1"):
        arena_hard.load_published_battles(tmp_path, "judge-x")
