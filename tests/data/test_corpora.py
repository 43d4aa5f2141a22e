"""Every named corpus loads from ../shared/data with the hub off, with the literature's preprocessing."""

import json

import pytest
from conftest import SHARED_DATA

from prunelight.data import evaluation_windows, load_corpus
from prunelight.data.corpora import CorpusSpec, known_corpora
from prunelight.errors import ConfigError, DataError

SEQLEN = 128


def _hf_wikitext_rows(path):
    # How the hub's wikitext-2-raw-v1 builds its rows, written out independently of prunelight.
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            rows.append(line if line.strip() else "")
    return rows


def _expected_text(name, split):
    if name == "wikitext2":
        file = {"test": "wiki.test.raw", "validation": "wiki.valid.raw"}[split]
        return "\n\n".join(_hf_wikitext_rows(SHARED_DATA / "wikitext2" / file))
    if name == "ptb":
        file = {"test": "ptb.test.txt", "validation": "ptb.valid.txt"}[split]
        lines = (SHARED_DATA / "ptb" / file).read_text().splitlines()
        return " ".join(line.strip() for line in lines if line.strip())
    if name == "c4":
        file = {"train": "c4_en_redpajama_sample1.jsonl", "validation": "c4_en_redpajama_sample2.jsonl"}[
            split
        ]
        lines = (SHARED_DATA / "c4" / file).read_text().splitlines()
        return "\n\n".join(json.loads(line)["text"] for line in lines)
    if name == "c4_zh" and split == "train":
        lines = (SHARED_DATA / "c4_zh" / "CLUECorpusSmall_sampled.txt").read_text().splitlines()
        return "\n\n".join(line.strip() for line in lines if line.strip())
    if name == "c4_zh":
        lines = (SHARED_DATA / "c4_zh" / "thucnews_cnews_1000.jsonl").read_text().splitlines()
        return "\n\n".join(json.loads(line)["text"] for line in lines)
    if name == "wikitext_zh":
        lines = (SHARED_DATA / "wikitext_zh" / "zhwiki_sampled.txt").read_text().splitlines()
        return "\n\n".join(line.strip() for line in lines if line.strip())
    if name == "squad":
        data = json.loads((SHARED_DATA / "squad" / "dev-v1.1.json").read_text())
        contexts = [p["context"] for a in data["data"] for p in a["paragraphs"]]
        return "\n\n".join(dict.fromkeys(contexts))
    raise AssertionError(name)


CASES = [
    ("wikitext2", "test"),
    ("wikitext2", "validation"),
    ("ptb", "test"),
    ("ptb", "validation"),
    ("c4", "train"),
    ("c4", "validation"),
    ("c4_zh", "train"),
    ("c4_zh", "validation"),
    ("wikitext_zh", "train"),
    ("squad", "validation"),
]


def test_every_named_corpus_is_covered():
    assert {name for name, _ in CASES} == set(known_corpora())


@pytest.mark.parametrize(("name", "split"), CASES)
def test_named_corpus_loads_offline_with_the_right_windows(name, split, tiny_tokenizer):
    windows = evaluation_windows(name, tiny_tokenizer, SEQLEN, split)
    expected_ids = tiny_tokenizer(_expected_text(name, split))["input_ids"]
    assert len(windows) == len(expected_ids) // SEQLEN
    assert windows.input_ids.shape == (len(expected_ids) // SEQLEN, SEQLEN)
    assert windows.input_ids[0].tolist() == expected_ids[:SEQLEN]
    assert windows.input_ids[-1].tolist() == expected_ids[(len(windows) - 1) * SEQLEN : len(windows) * SEQLEN]
    assert str(SHARED_DATA) in windows.origins[0]


def test_wikitext2_rows_match_the_hub_layout():
    corpus = load_corpus("wikitext2", "test")
    assert corpus.texts[0] == "" and corpus.texts[1] == " = Robert Boulter = \n"
    assert corpus.join == "\n\n" and corpus.ordered


def test_test_split_of_c4_means_validation():
    assert load_corpus("c4", "test").origin == load_corpus("c4", "validation").origin


@pytest.mark.parametrize(
    ("fmt", "count", "start"),
    [("context", 2067, ""), ("context_question", 10570, ""), ("prompt", 10570, "Context: ")],
)
def test_squad_formats(fmt, count, start):
    corpus = load_corpus(CorpusSpec("squad", format=fmt), "validation")
    assert len(corpus.texts) == count
    assert corpus.texts[0].startswith(start)
    if fmt == "context_question":
        context, question = corpus.texts[0].split("\n")[-2:]
        assert question.endswith("?")
    if fmt == "prompt":
        assert "\nQuestion: " in corpus.texts[0] and "\nAnswer: " in corpus.texts[0]


def test_squad_shorthand_string():
    assert load_corpus("squad:prompt", "validation").label == "squad_prompt"


@pytest.mark.parametrize("fmt", ["context", "prompt"])
def test_squad_documents_split_by_article_without_overlap(fmt):
    """Two parts of SQuAD dev share no paragraph and together give every text, so one split can calibrate
    on one part and be evaluated on the other."""
    whole = load_corpus(CorpusSpec("squad", format=fmt), "validation").texts
    first, second = (
        load_corpus(CorpusSpec("squad", format=fmt, documents=part), "validation")
        for part in ([0, 0.5], [0.5, 1])
    )
    assert first.label == f"squad_{fmt}_0-0.5" and second.label == f"squad_{fmt}_0.5-1"
    assert first.texts and second.texts and first.texts + second.texts == whole

    def paragraphs(texts):
        return {t.split("\n")[0] for t in texts}

    assert not paragraphs(first.texts) & paragraphs(second.texts)


def test_documents_of_a_running_text_and_a_local_file(tmp_path):
    rows = load_corpus("ptb", "test").texts
    assert (
        load_corpus({"name": "ptb", "documents": [0.25, 0.5]}, "test").texts
        == rows[round(0.25 * len(rows)) : round(0.5 * len(rows))]
    )
    path = tmp_path / "notes.txt"
    path.write_text("\n".join(f"line {i}" for i in range(10)))
    part = load_corpus({"name": str(path), "per_line": True, "documents": [0.8, 1]}, "test")
    assert part.texts == ["line 8", "line 9"]
    with pytest.raises(DataError, match="selects none; widen the part"):
        load_corpus({"name": str(path), "documents": [0, 0.4]}, "test")  # one document: nothing to split


@pytest.mark.parametrize("documents", [[0.5, 0.5], [-0.1, 0.5], [0, 1.5], [0.6, 0.2]])
def test_documents_must_be_an_increasing_part_of_the_split(documents):
    with pytest.raises(ConfigError, match="documents must be \\[start, stop\\]"):
        CorpusSpec("squad", documents=documents)


def test_unknown_corpus_lists_known_ones():
    with pytest.raises(DataError) as err:
        load_corpus("wikitext103", "test")
    for name in known_corpora():
        assert name in str(err.value)


def test_missing_split_without_hub_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as err:
        load_corpus("wikitext2", "train")
    message = str(err.value)
    assert str(SHARED_DATA / "wikitext2" / "wiki.train.raw") in message
    assert "PRUNELIGHT_DATA" in message and "HF_HUB_OFFLINE" in message


def test_data_root_setting_wins_over_environment(tmp_path):
    (tmp_path / "ptb").mkdir()
    (tmp_path / "ptb" / "ptb.test.txt").write_text(" a b c \n d e \n")
    corpus = load_corpus("ptb", "test", root=tmp_path)
    assert corpus.running_text() == "a b c d e"


def test_corpus_without_the_split_is_refused():
    with pytest.raises(DataError, match="no 'test' split"):
        load_corpus("wikitext_zh", "test")


def test_format_only_for_squad():
    with pytest.raises(ConfigError, match="SQuAD"):
        load_corpus(CorpusSpec("c4", format="prompt"), "train")
    with pytest.raises(ConfigError, match="one of"):
        CorpusSpec("squad", format="qa")


def test_bad_split_and_weight():
    with pytest.raises(ConfigError, match="unknown split"):
        load_corpus("ptb", "holdout")
    with pytest.raises(ConfigError, match="weight"):
        CorpusSpec("ptb", weight=0)
