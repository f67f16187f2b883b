"""Preference data: row layouts, error messages for malformed files, splits without leakage, encoding."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.data import (
    FALLBACK_TEMPLATE,
    EncodeStats,
    PreferenceExample,
    data_dir_from_env,
    encode,
    ensure_chat_template,
    load_split,
    load_splits,
    normalise_row,
    prompt_ids,
    read_local_file,
    resolve_source,
    response_ids,
)
from harness.errors import BenchError

UF = "trl-lib/ultrafeedback_binarized"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def system(text):
    return {"role": "system", "content": text}


def content(ex: PreferenceExample):
    return ex.prompt, ex.chosen, ex.rejected


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def plain_rows(prefix: str, n: int) -> list[dict]:
    return [{"prompt": f"{prefix} question {i}?", "chosen": f"good answer {i}", "rejected": f"bad answer {i}"}
            for i in range(n)]


# ---------------------------------------------------------------- layouts


SINGLE_TURN_LAYOUTS = {
    "plain strings": {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "5."},
    "prompt messages + assistant lists": {
        "prompt": [user("What is 2+2?")], "chosen": [assistant("4.")], "rejected": [assistant("5.")]},
    "full conversations, implicit prompt (trl-lib / argilla)": {
        "chosen": [user("What is 2+2?"), assistant("4.")],
        "rejected": [user("What is 2+2?"), assistant("5.")]},
    "HuggingFaceH4: prompt str + full conversations": {
        "prompt": "What is 2+2?",
        "chosen": [user("What is 2+2?"), assistant("4.")],
        "rejected": [user("What is 2+2?"), assistant("5.")]},
    "prompt messages + full conversations": {
        "prompt": [user("What is 2+2?")],
        "chosen": [user("What is 2+2?"), assistant("4.")],
        "rejected": [user("What is 2+2?"), assistant("5.")]},
}


@pytest.mark.parametrize("layout", list(SINGLE_TURN_LAYOUTS))
def test_normalise_row_layouts_give_the_same_example(layout):
    ex = normalise_row(SINGLE_TURN_LAYOUTS[layout], "somewhere:1")
    assert content(ex) == ((("user", "What is 2+2?"),), "4.", "5.")
    assert ex.source == "somewhere:1"
    assert ex.messages == [{"role": "user", "content": "What is 2+2?"}]


def test_layouts_share_uid():
    uids = {normalise_row(row, f"x:{i}").uid() for i, row in enumerate(SINGLE_TURN_LAYOUTS.values())}
    assert len(uids) == 1


def test_multi_turn_prompt_with_system_message_in_both_layouts():
    history = [system("Be brief."), user("Hi"), assistant("Hello."), user("Capital of France?")]
    explicit = normalise_row({"prompt": history, "chosen": "Paris.", "rejected": "Lyon."}, "a:1")
    implicit = normalise_row({"chosen": history + [assistant("Paris.")],
                              "rejected": history + [assistant("Lyon.")]}, "a:2")
    expected_prompt = (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."),
                       ("user", "Capital of France?"))
    assert content(explicit) == content(implicit) == (expected_prompt, "Paris.", "Lyon.")


def test_conversations_answering_different_prompts_are_rejected():
    row = {"chosen": [user("Q1"), assistant("A")], "rejected": [user("Q2"), assistant("B")]}
    with pytest.raises(BenchError, match=r"w:7: field 'rejected'.*differs"):
        normalise_row(row, "w:7")


def test_conversation_must_end_with_assistant():
    row = {"chosen": [user("Q"), user("A")], "rejected": [user("Q"), user("B")]}
    with pytest.raises(BenchError, match=r"w:1: field 'chosen'.*end with an assistant message"):
        normalise_row(row, "w:1")


def test_empty_prompt_is_rejected():
    with pytest.raises(BenchError, match=r"w:1: field 'prompt' is empty"):
        normalise_row({"prompt": "   ", "chosen": "a", "rejected": "b"}, "w:1")


def test_missing_prompt_with_text_replies_is_rejected():
    with pytest.raises(BenchError, match=r"w:1: field 'prompt' is missing"):
        normalise_row({"chosen": "a", "rejected": "b"}, "w:1")


def test_reply_of_wrong_type_is_rejected():
    with pytest.raises(BenchError, match=r"w:1: field 'chosen' must be text or a list.*int"):
        normalise_row({"prompt": "q", "chosen": 3, "rejected": "b"}, "w:1")


# ---------------------------------------------------------------- malformed files

GOOD = {"prompt": "q", "chosen": "a", "rejected": "b"}

BAD_ROWS = {
    # name: (row written on line 3, substrings the error must contain besides "<path>:3")
    "missing rejected": ({"prompt": "q", "chosen": "a"}, ["'rejected'", "missing"]),
    "invalid json": ('{"prompt": "q", "chosen": "a", "rejected": ', ["not valid JSON"]),
    "message without role": ({"prompt": [{"content": "q"}], "chosen": "a", "rejected": "b"},
                             ["'prompt'", "message 0", "'role'"]),
    "unknown role": ({"prompt": [{"role": "bot", "content": "q"}], "chosen": "a", "rejected": "b"},
                     ["'prompt'", "unknown role 'bot'"]),
    "prompt not ending with user": ({"prompt": [user("q"), assistant("x")], "chosen": "a", "rejected": "b"},
                                    ["'prompt'", "must end with a user message"]),
    "non-object row": ('["q", "a", "b"]', ["must be a JSON object", "list"]),
    "content not text": ({"prompt": [{"role": "user", "content": 5}], "chosen": "a", "rejected": "b"},
                         ["'prompt'", "content must be text"]),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_malformed_jsonl_names_file_line_and_field(tmp_path, case):
    bad, needles = BAD_ROWS[case]
    # line 1 good, line 2 blank (skipped but counted), line 3 bad, line 4 good
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + (bad if isinstance(bad, str) else json.dumps(bad)) + "\n"
                    + json.dumps(GOOD) + "\n")
    with pytest.raises(BenchError) as err:
        read_local_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}:3")
    for needle in needles:
        assert needle in message


def test_empty_file_is_an_error(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text("\n")
    with pytest.raises(BenchError, match="holds no rows"):
        read_local_file(path)


def test_unsupported_suffix_is_an_error(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,chosen,rejected\n")
    with pytest.raises(BenchError, match=r"unsupported data file type"):
        read_local_file(path)


def test_jsonl_sources_carry_line_numbers(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", plain_rows("p", 2))
    assert [ex.source for ex in read_local_file(path)] == [f"{path}:1", f"{path}:2"]


def test_json_list_loads(tmp_path):
    rows = plain_rows("p", 2) + [SINGLE_TURN_LAYOUTS["full conversations, implicit prompt (trl-lib / argilla)"]]
    path = tmp_path / "train.json"
    path.write_text(json.dumps(rows))
    out = read_local_file(path)
    assert [content(ex) for ex in out] == [
        ((("user", "p question 0?"),), "good answer 0", "bad answer 0"),
        ((("user", "p question 1?"),), "good answer 1", "bad answer 1"),
        ((("user", "What is 2+2?"),), "4.", "5."),
    ]
    assert out[2].source == f"{path}[2]"


def test_json_must_be_a_list(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(GOOD))
    with pytest.raises(BenchError, match="must hold a list"):
        read_local_file(path)


def test_invalid_json_file_names_the_line(tmp_path):
    path = tmp_path / "train.json"
    path.write_text('[\n{"prompt": "q",\n "chosen": }\n]')
    with pytest.raises(BenchError) as err:
        read_local_file(path)
    assert str(err.value).startswith(f"{path}:3: not valid JSON")


def test_parquet_loads_strings_and_conversations(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    plain = tmp_path / "plain.parquet"
    pd.DataFrame(plain_rows("p", 3)).to_parquet(plain)
    assert [content(ex) for ex in read_local_file(plain)] == [
        ((("user", f"p question {i}?"),), f"good answer {i}", f"bad answer {i}") for i in range(3)]

    # list-of-struct columns come back as numpy arrays of dicts; they must be normalised like JSON lists
    conv = tmp_path / "conv.parquet"
    pd.DataFrame([{"chosen": [user("Q"), assistant("yes")], "rejected": [user("Q"), assistant("no")]}]
                 ).to_parquet(conv)
    [ex] = read_local_file(conv)
    assert content(ex) == ((("user", "Q"),), "yes", "no")
    assert ex.source == f"{conv}[row 0]"


# ---------------------------------------------------------------- splits


def test_real_data_empty_replies_are_dropped_and_counted(shared_dir):
    source = resolve_source(UF, shared_dir)
    train_rows = load_split(source, "train")
    train_path = shared_dir / "data" / "ultrafeedback_binarized_1k" / "train.jsonl"
    empty = [ex.source for ex in train_rows if not ex.chosen.strip() or not ex.rejected.strip()]
    # line 479 has an empty rejected reply, line 834 an empty chosen one
    assert empty == [f"{train_path}:479", f"{train_path}:834"]
    splits = load_splits(source, n_train=998, n_eval=200, seed=0)
    assert splits.dropped_empty == 2
    assert len(splits.train) == 998  # everything usable
    assert all(ex.chosen.strip() and ex.rejected.strip() for ex in splits.train + splits.test)
    assert f"{train_path}:479" not in {ex.source for ex in splits.train}


def test_real_data_has_no_train_test_prompt_overlap(shared_dir):
    splits = load_splits(resolve_source(UF, shared_dir), n_train=998, n_eval=200, seed=0)
    assert splits.dropped_for_leakage == 0
    assert len(splits.test) == 200
    assert not {ex.prompt for ex in splits.train} & {ex.prompt for ex in splits.test}


def leaky_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "leaky"
    test = plain_rows("held-out", 4)
    # two train rows reuse held-out prompts (with different replies: the prompt alone is what leaks)
    train = plain_rows("train", 6) + [
        {"prompt": test[0]["prompt"], "chosen": "other good", "rejected": "other bad"},
        {"prompt": test[3]["prompt"], "chosen": "x", "rejected": "y"},
    ]
    write_jsonl(folder / "train.jsonl", train)
    write_jsonl(folder / "test.jsonl", test)
    return folder


def test_train_rows_with_held_out_prompts_are_dropped(tmp_path):
    source = resolve_source(str(leaky_folder(tmp_path)), None)
    # n_eval=1: leakage is checked against the whole test split, not just the rows evaluated
    splits = load_splits(source, n_train=6, n_eval=1, seed=3)
    assert splits.dropped_for_leakage == 2
    assert splits.dropped_empty == 0
    test_prompts = {ex.prompt for ex in load_split(source, "test")}
    assert not {ex.prompt for ex in splits.train} & test_prompts
    assert sorted(ex.chosen for ex in splits.train) == [f"good answer {i}" for i in range(6)]


def test_leakage_counts_in_the_too_few_rows_error(tmp_path):
    source = resolve_source(str(leaky_folder(tmp_path)), None)
    with pytest.raises(BenchError) as err:
        load_splits(source, n_train=7, n_eval=1, seed=0)
    message = str(err.value)
    assert "asks for 7 training rows" in message
    assert "has 6 usable ones" in message
    assert "2 dropped because their prompt is in the test split" in message


def test_load_splits_is_seeded(shared_dir):
    source = resolve_source(UF, shared_dir)
    a = load_splits(source, n_train=20, n_eval=10, seed=0)
    b = load_splits(source, n_train=20, n_eval=10, seed=0)
    c = load_splits(source, n_train=20, n_eval=10, seed=1)
    assert [ex.uid() for ex in a.train] == [ex.uid() for ex in b.train]
    assert [ex.uid() for ex in a.test] == [ex.uid() for ex in b.test]
    assert len(a.train) == 20 and len(a.test) == 10
    assert {ex.uid() for ex in a.train} != {ex.uid() for ex in c.train}
    # Held-out rows depend on the data alone: every training seed is evaluated on the same ones.
    assert [ex.uid() for ex in a.test] == [ex.uid() for ex in c.test]
    d = load_splits(source, n_train=20, n_eval=10, seed=7)
    assert [ex.uid() for ex in a.test] == [ex.uid() for ex in d.test]


def test_asking_for_more_rows_than_exist_is_a_clear_error(shared_dir):
    with pytest.raises(BenchError) as err:
        load_splits(resolve_source(UF, shared_dir), n_train=5000, n_eval=10, seed=0)
    message = str(err.value)
    assert "asks for 5000 training rows" in message
    assert "998 usable ones" in message
    assert "2 for an empty reply" in message


def test_n_eval_is_capped_at_the_test_size(tmp_path):
    splits = load_splits(resolve_source(str(leaky_folder(tmp_path)), None), n_train=2, n_eval=100, seed=0)
    assert len(splits.test) == 4


def test_no_usable_test_rows_is_an_error(tmp_path):
    folder = tmp_path / "d"
    write_jsonl(folder / "train.jsonl", plain_rows("t", 3))
    write_jsonl(folder / "test.jsonl", [{"prompt": "q", "chosen": "", "rejected": "b"}])
    with pytest.raises(BenchError, match="no usable held-out"):
        load_splits(resolve_source(str(folder), None), n_train=1, n_eval=1, seed=0)


# ---------------------------------------------------------------- resolving sources


def test_known_hub_id_resolves_to_the_shared_copy(shared_dir):
    source = resolve_source(UF, shared_dir)
    folder = shared_dir / "data" / "ultrafeedback_binarized_1k"
    assert source.kind == "local-dir"
    assert source.location == str(folder)
    assert source.files == {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
    assert source.name == UF
    assert resolve_source(UF, shared_dir).fingerprint == source.fingerprint


def test_unknown_dataset_with_data_dir_lists_paths_tried(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data_dir = tmp_path / "datadir"
    data_dir.mkdir()
    with pytest.raises(BenchError) as err:
        resolve_source("someone/no-such-set", data_dir)
    message = str(err.value)
    assert "'someone/no-such-set' has no local copy" in message
    assert str(data_dir / "someone" / "no-such-set") in message
    assert str(data_dir / "data" / "no-such-set") in message


def test_known_dataset_missing_under_data_dir_lists_its_known_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BenchError) as err:
        resolve_source(UF, tmp_path)
    assert str(tmp_path / "data" / "ultrafeedback_binarized_1k") in str(err.value)


def test_data_dir_lookup_by_last_name_component(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "dd" / "data" / "my-set" / "train.jsonl", plain_rows("t", 2))
    source = resolve_source("org/my-set", tmp_path / "dd")
    assert source.kind == "local-dir"
    assert source.location == str(tmp_path / "dd" / "data" / "my-set")
    assert set(source.files) == {"train"}


def test_offline_without_data_dir_points_at_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchError) as err:
        resolve_source(UF, None)
    assert "--data-dir" in str(err.value)
    assert "offline" in str(err.value)


def test_online_without_data_dir_resolves_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    source = resolve_source(UF, None)  # resolving downloads nothing
    assert (source.kind, source.location) == ("hub", UF)


def test_data_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    assert data_dir_from_env(None) == tmp_path
    assert data_dir_from_env("/elsewhere") == Path("/elsewhere")
    monkeypatch.delenv("BENCH_DATA_DIR")
    assert data_dir_from_env(None) is None


def test_local_folder_path(tmp_path):
    folder = leaky_folder(tmp_path)
    source = resolve_source(str(folder), None)
    assert source.kind == "local-dir"
    assert source.files == {"train": str(folder / "train.jsonl"), "test": str(folder / "test.jsonl")}
    before = source.fingerprint
    write_jsonl(folder / "test.jsonl", plain_rows("changed", 4))
    assert resolve_source(str(folder), None).fingerprint != before


def test_prefs_file_names_are_found(tmp_path):
    folder = tmp_path / "h4"
    write_jsonl(folder / "train_prefs.jsonl", plain_rows("t", 2))
    write_jsonl(folder / "test_prefs.jsonl", plain_rows("e", 2))
    source = resolve_source(str(folder), None)
    assert source.files == {"train": str(folder / "train_prefs.jsonl"), "test": str(folder / "test_prefs.jsonl")}


def test_folder_without_train_file_is_an_error(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(BenchError, match=r"holds no train\.jsonl"):
        resolve_source(str(folder), None)


def test_single_local_file_is_hash_split(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", plain_rows("q", 200))
    source = resolve_source(str(path), None)
    assert source.kind == "local-file"
    train, test = load_split(source, "train"), load_split(source, "test")
    train_uids, test_uids = [ex.uid() for ex in train], [ex.uid() for ex in test]
    assert not set(train_uids) & set(test_uids)
    assert len(train) + len(test) == 200
    assert 5 <= len(test) <= 40  # about a tenth
    # deterministic, and by content: reversing the file keeps every row on its side
    assert [ex.uid() for ex in load_split(source, "test")] == test_uids
    reversed_path = write_jsonl(tmp_path / "rev.jsonl", plain_rows("q", 200)[::-1])
    rev = resolve_source(str(reversed_path), None)
    assert sorted(ex.uid() for ex in load_split(rev, "test")) == sorted(test_uids)


def test_folder_without_test_file_holds_out_a_hash_slice(tmp_path):
    folder = tmp_path / "trainonly"
    write_jsonl(folder / "train.jsonl", plain_rows("q", 200))
    source = resolve_source(str(folder), None)
    train, test = load_split(source, "train"), load_split(source, "test")
    assert test and not {ex.uid() for ex in train} & {ex.uid() for ex in test}
    assert len(train) + len(test) == 200


# ---------------------------------------------------------------- chat templates and encoding


class _NoTemplate:
    chat_template = None


def test_ensure_chat_template_borrows_or_falls_back():
    teacher = _NoTemplate()
    teacher.chat_template = "TEACHER"
    tok = _NoTemplate()
    assert ensure_chat_template(tok, teacher) == "TEACHER"
    tok = _NoTemplate()
    assert ensure_chat_template(tok) == FALLBACK_TEMPLATE
    tok.chat_template = "OWN"
    assert ensure_chat_template(tok, teacher) == "OWN"


def _through_end_of_turn(tok, text: str) -> str:
    return text[: text.rindex(tok.eos_token) + len(tok.eos_token)]


@pytest.mark.parametrize("messages", [
    [user("What is the capital of France?")],
    [system("Answer in one word."), user("Hi"), assistant("Hello"), user("Capital of France?")],
])
def test_response_ids_end_with_eos_and_join_to_the_template(smollm2_tokenizer, messages):
    tok = smollm2_tokenizer
    reply = "The capital of France is Paris."
    p = prompt_ids(tok, messages)
    r = response_ids(tok, messages, reply)
    assert r[-1] == tok.eos_token_id
    assert r.count(tok.eos_token_id) == 1
    full = tok.apply_chat_template(messages + [assistant(reply)], tokenize=False)
    assert tok.decode(p + r, skip_special_tokens=False) == _through_end_of_turn(tok, full)
    assert tok.decode(r, skip_special_tokens=False) == reply + tok.eos_token
    assert tok.decode(p, skip_special_tokens=False) == tok.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True)


def test_a_cut_answer_gets_no_end_of_turn(smollm2_tokenizer):
    # A generated answer cut at the token limit did not stop: as a training target or a teacher score it must
    # not end with the end-of-turn token (which would teach stopping mid-sentence).
    tok = smollm2_tokenizer
    messages = [user("Tell me a story.")]
    whole = response_ids(tok, messages, "Once upon a time there was")
    cut = response_ids(tok, messages, "Once upon a time there was", finished=False)
    assert whole[-1] == tok.eos_token_id and tok.eos_token_id not in cut
    assert cut == whole[:-1]
    assert tok.decode(cut) == "Once upon a time there was"
    assert response_ids(tok, messages, "", finished=False) == response_ids(tok, messages, "")  # no text: keeps it


def test_encode_truncates_and_counts_exactly(smollm2_tokenizer):
    tok = smollm2_tokenizer
    short_prompt = "Name a colour."
    n_short = len(prompt_ids(tok, [user(short_prompt)]))
    max_prompt_len = n_short  # exactly fits: not truncated
    max_seq_len = max_prompt_len + 16
    long_text = " ".join(f"word{i}" for i in range(200))

    examples = {
        "short": PreferenceExample((("user", short_prompt),), "Blue.", "Red.", "t:1"),
        "long prompt": PreferenceExample((("user", long_text + " Name a colour."),), "Blue.", "Red.", "t:2"),
        "long chosen": PreferenceExample((("user", short_prompt),), long_text, "Red.", "t:3"),
        "long both": PreferenceExample((("user", short_prompt),), long_text, long_text, "t:4"),
    }
    stats = EncodeStats()
    out = {k: encode(tok, ex, max_seq_len, max_prompt_len, stats) for k, ex in examples.items()}
    assert (stats.rows, stats.prompts_truncated, stats.chosen_truncated, stats.rejected_truncated) == (4, 1, 2, 1)

    short = out["short"]
    assert short.prompt_ids == prompt_ids(tok, [user(short_prompt)])
    assert short.chosen_ids == response_ids(tok, [user(short_prompt)], "Blue.")

    # prompts are cut from the left: the question and the generation header survive
    lp = out["long prompt"]
    full_prompt = prompt_ids(tok, examples["long prompt"].messages)
    assert len(full_prompt) > max_prompt_len
    assert lp.prompt_ids == full_prompt[-max_prompt_len:]
    assert tok.decode(lp.prompt_ids).endswith("Name a colour.<|im_end|>\n<|im_start|>assistant\n")
    assert lp.chosen_ids[-1] == tok.eos_token_id  # short reply untouched

    # responses are cut from the right to fit max_seq_len
    lc = out["long chosen"]
    full_chosen = response_ids(tok, examples["long chosen"].messages, long_text)
    room = max_seq_len - len(lc.prompt_ids)
    assert lc.chosen_ids == full_chosen[:room]
    assert len(lc.prompt_ids) + len(lc.chosen_ids) == max_seq_len
    assert lc.rejected_ids == response_ids(tok, examples["long chosen"].messages, "Red.")
    for enc in out.values():
        assert len(enc.prompt_ids) <= max_prompt_len
        assert len(enc.prompt_ids) + max(len(enc.chosen_ids), len(enc.rejected_ids)) <= max_seq_len


def test_train_only_folder_splits_without_reporting_leakage(tmp_path):
    folder = tmp_path / "trainonly"
    write_jsonl(folder / "train.jsonl", plain_rows("q", 200))
    source = resolve_source(str(folder), None)
    n_test = len(load_split(source, "test"))
    splits = load_splits(source, n_train=200 - n_test, n_eval=5, seed=0)
    assert splits.dropped_for_leakage == 0
    assert not {ex.prompt for ex in splits.train} & {ex.prompt for ex in load_split(source, "test")}


def test_records_store_a_portable_data_location(shared_dir, tmp_path, monkeypatch):
    from harness.data import portable_location

    source = resolve_source(UF, shared_dir)
    assert portable_location(source, shared_dir) == "<data-dir>/data/ultrafeedback_binarized_1k"
    monkeypatch.chdir(shared_dir)
    assert portable_location(source, None) == "data/ultrafeedback_binarized_1k"  # relative to the working folder
    monkeypatch.chdir(tmp_path)
    assert portable_location(source, None) == "ultrafeedback_binarized_1k"  # never an absolute path
    from harness.data import DataSource

    assert portable_location(DataSource("some/dataset", "hub", "some/dataset", "x"), None) == "some/dataset"
