"""Task data readers (CoNLL-U, CoNLL/IOB, CSV/TSV/JSONL, hub ids), splits and label checks."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from engine.data import tasks
from engine.data.tasks import Columns, TextExample, TokenExample, load_task, to_iob2
from engine.errors import TaskDataError
from engine.tasks import task as task_kind

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def conllu_row(word_id: str, form: str, upos: str) -> str:
    return "\t".join([word_id, form, "_", upos, "_", "_", "_", "_", "_", "_"])


def conllu(*sentences: list[tuple[str, str, str]], final_blank: bool = True) -> str:
    blocks = ["# sent_id = s\n# text = x\n" + "\n".join(conllu_row(*row) for row in rows) for rows in sentences]
    return "\n\n".join(blocks) + ("\n\n" if final_blank else "\n")


def text_folder(root: Path, train: str, dev: str, test: str, suffix: str = ".csv") -> Path:
    for split, text in (("train", train), ("dev", dev), ("test", test)):
        write(root / f"{split}{suffix}", text)
    return root


# --- CoNLL-U -----------------------------------------------------------------------------------


def test_conllu_multiword_tokens_empty_nodes_and_comments(tmp_path: Path) -> None:
    first = [("1-2", "della", "_"), ("1", "di", "ADP"), ("2", "la", "DET"), ("3", "casa", "NOUN"),
             ("3.1", "è", "AUX"), ("4", ".", "PUNCT")]
    second = [("1", "Iva", "INTJ"), ("2", "!", "PUNCT")]
    text = conllu(first, second, final_blank=False)
    for split in ("train", "dev", "test"):
        write(tmp_path / f"xx_tb-ud-{split}.conllu", text)
    data = load_task("pos", tmp_path)
    assert data.train == data.dev == data.test == (
        TokenExample(("di", "la", "casa", "."), ("ADP", "DET", "NOUN", "PUNCT")),
        TokenExample(("Iva", "!"), ("INTJ", "PUNCT")),
    )
    assert data.labels == ("ADP", "DET", "NOUN", "PUNCT", "INTJ")
    assert data.is_token_task and data.source == str(tmp_path)


def test_conllu_wrong_column_count_names_file_and_line(tmp_path: Path) -> None:
    text = conllu([("1", "a", "NOUN")]) + "# c\n1\tb\t_\tNOUN\t_\t_\n"
    path = write(tmp_path / "bad.conllu", text)
    with pytest.raises(TaskDataError, match=rf"{path}:6: expected 10 tab-separated CoNLL-U columns, found 6"):
        load_task("pos", path)


def test_conllu_missing_upos_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "x.conllu", conllu([("1", "a", "NOUN"), ("2", "b", "_")]))
    with pytest.raises(TaskDataError, match=rf"{path}:4: word 'b' has no UPOS"):
        load_task("pos", path)


# --- CoNLL / IOB -------------------------------------------------------------------------------


def test_raw_text_is_split_into_words_with_punctuation_apart() -> None:
    text = "Benki ya Dunia. ng'ombe, l-Italja (3.5 / 1,000)!"
    assert [text[s:e] for s, e in tasks.word_spans(text)] == \
        ["Benki", "ya", "Dunia", ".", "ng'ombe", ",", "l-Italja", "(", "3.5", "/", "1,000", ")", "!"]
    assert tasks.word_spans(" \t\n") == []


def test_to_iob2() -> None:
    assert to_iob2(["I-PER", "I-PER", "I-LOC", "O", "I-PER", "B-PER", "I-PER"]) == (
        "B-PER", "I-PER", "B-LOC", "O", "B-PER", "B-PER", "I-PER")
    iob2 = ("B-ORG", "I-ORG", "O", "B-LOC")
    assert to_iob2(iob2) == iob2


def test_iob_reader_docstart_iob1_tabs_and_extra_columns(tmp_path: Path) -> None:
    train = ("-DOCSTART- -X- O O\n\n"
             "Juma I-PER\nKikwete I-PER\nalienda O\nDodoma I-LOC\n\n"
             "Benki\tNNP\tB-NP\tI-ORG\nKuu\tNNP\tI-NP\tI-ORG\n"          # tab separated, 4 columns
             "-DOCSTART- O\n"
             "Amina  B-PER\n")                                            # no final blank line
    folder = tmp_path / "ner"
    write(folder / "train.txt", train)
    write(folder / "dev.txt", "Amina B-PER\n")
    write(folder / "test.txt", "Bw. O\nKuu I-ORG\n")
    data = load_task("ner", folder)
    assert data.train == (
        TokenExample(("Juma", "Kikwete", "alienda", "Dodoma"), ("B-PER", "I-PER", "O", "B-LOC")),
        TokenExample(("Benki", "Kuu"), ("B-ORG", "I-ORG")),
        TokenExample(("Amina",), ("B-PER",)),
    )
    assert data.test == (TokenExample(("Bw.", "Kuu"), ("O", "B-ORG")),)
    assert data.labels == ("B-PER", "I-PER", "O", "B-LOC", "I-LOC", "B-ORG", "I-ORG")


def test_iob_reader_refuses_bad_tag_and_single_column(tmp_path: Path) -> None:
    bad = write(tmp_path / "a" / "train.txt", "Juma B-PER\nyuko E-PER\n")
    with pytest.raises(TaskDataError, match=rf"{bad}:2: tag 'E-PER' is not O, B-TYPE or I-TYPE"):
        load_task("ner", bad)
    lonely = write(tmp_path / "b" / "train.txt", "Juma B-PER\n\nyuko\n")
    with pytest.raises(TaskDataError, match=rf"{lonely}:3: expected 'token tag'"):
        load_task("ner", lonely)


def test_ner_unseen_entity_type_is_refused_but_inside_tag_of_seen_type_is_not(tmp_path: Path) -> None:
    folder = tmp_path / "ner"
    write(folder / "train.txt", "Juma B-PER\nyuko O\n")
    write(folder / "dev.txt", "Juma B-PER\nKikwete I-PER\n")
    write(folder / "test.txt", "Dodoma B-LOC\n")
    with pytest.raises(TaskDataError, match=r"'B-LOC' occurs in test .*test\.txt.* never in train"):
        load_task("ner", folder)


# --- CSV / TSV / JSONL -------------------------------------------------------------------------


def test_csv_without_header_quoted_commas_newlines_and_tabs(tmp_path: Path) -> None:
    train = ('1,"Tajjeb, tajjeb ħafna"\n'
             '0,"Linja waħda\nu oħra"\n'
             '0,"tab\there ""quoted"""\n'
             "1,sempliċi\n\n")
    folder = text_folder(tmp_path, train, "0,x\n1,y\n", "1,z\n")
    data = load_task("sentiment", folder)
    assert data.train == (
        TextExample("Tajjeb, tajjeb ħafna", "1"),
        TextExample("Linja waħda\nu oħra", "0"),
        TextExample('tab\there "quoted"', "0"),
        TextExample("sempliċi", "1"),
    )
    assert data.labels == ("1", "0")
    assert not data.is_token_task


def test_csv_text_label_order_detected_by_distinct_values(tmp_path: Path) -> None:
    folder = text_folder(tmp_path, "good film,pos\nbad film,neg\nfine film,pos\n", "meh,neg\n", "ok,pos\n")
    data = load_task("sentiment", folder)
    assert data.train[0] == TextExample("good film", "pos")
    assert data.labels == ("pos", "neg")


def test_csv_header_picks_named_columns_and_skips_others(tmp_path: Path) -> None:
    train = "id,Sentiment,extra,Sentence\n7,neg,z,\"awful, really\"\n8,pos,z,lovely\n"
    folder = text_folder(tmp_path, train, "Sentence,Sentiment\nok,pos\n", "label,text\nneg,nah\n")
    data = load_task("sentiment", folder)
    assert data.train == (TextExample("awful, really", "neg"), TextExample("lovely", "pos"))
    assert data.dev == (TextExample("ok", "pos"),)
    assert data.test == (TextExample("nah", "neg"),)


def test_csv_wrong_column_count_names_file_and_reader_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d" / "train.csv", '0,"two\nlines"\n1,fine\n1,too,many\n')
    with pytest.raises(TaskDataError, match=rf"{path}:4: expected 2 columns .* found 3"):
        load_task("sentiment", path)
    headed = write(tmp_path / "e" / "train.csv", "text,label\nfine,1\nshort\n")
    with pytest.raises(TaskDataError, match=rf"{headed}:3: expected 2 columns as in the header, found 1"):
        load_task("sentiment", headed)


def test_csv_missing_closing_quote_is_reported_not_swallowing_rows(tmp_path: Path) -> None:
    # the quote opened on line 2 closes on line 4, so a lenient reader makes lines 2-4 one text and loses rows
    path = write(tmp_path / "d" / "train.csv", 'text,label\n"unclosed,pos\nsecond,neg\n"third",pos\nfourth,neg\n')
    with pytest.raises(TaskDataError, match=rf"{path}:2: a quoted field .* closing quote missing"):
        load_task("sentiment", path)


def test_utf16_tables_with_a_byte_order_mark_are_read(tmp_path: Path) -> None:
    text = "text,label\nġurnata sabiħa,pos\nxita qawwija,neg\nżiemel,pos\n" * 4
    path = tmp_path / "d" / "train.csv"
    path.parent.mkdir()
    path.write_bytes(text.encode("utf-16"))  # Windows "Unicode text" exports: UTF-16 with its BOM
    data = load_task("sentiment", path)
    assert TextExample("ġurnata sabiħa", "pos") in data.train + data.dev + data.test


def test_header_with_text_but_no_label_column_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "text,stars\nnice,5\n")
    with pytest.raises(TaskDataError, match=r"train\.csv:1: the header has no label column"):
        load_task("sentiment", path)


def test_unnamed_text_column_is_inferred_as_the_clearly_longest(tmp_path: Path) -> None:
    tweets = "this film was a long and lovely surprise,positive\nawful acting all along,negative\n"
    data = load_task("sentiment", write(tmp_path / "afrisenti" / "train.csv", "tweet,label\n" + tweets * 10))
    assert TextExample("this film was a long and lovely surprise", "positive") in data.train
    reviews = "1,a warm and very funny story,1\n2,dull from start to end,0\n"
    data = load_task("sentiment", write(tmp_path / "reviews" / "train.csv", "id,review,polarity\n" + reviews * 10))
    assert TextExample("dull from start to end", "0") in data.train


def test_ambiguous_columns_are_refused_with_the_columns_listed(tmp_path: Path) -> None:
    table = "some title here,some body here,1\nother title,other body,0\n"
    path = write(tmp_path / "train.csv", "title,body,label\n" + table * 10)
    with pytest.raises(TaskDataError, match=r"which column is the text\?.*'title', 'body', 'label'.*--text-column"):
        load_task("sentiment", path)
    data = load_task("sentiment", path, columns=Columns(text="body"))
    assert TextExample("some body here", "1") in data.train


def test_named_columns_override_names_and_must_exist(tmp_path: Path) -> None:
    table = "ignored,x,5,loved it\nignored,y,1,hated it\n"
    path = write(tmp_path / "train.csv", "text,label,stars,comment\n" + table * 10)
    data = load_task("sentiment", path, columns=Columns(text="Comment", label="stars"))
    assert {TextExample("loved it", "5"), TextExample("hated it", "1")} == set(data.train)
    with pytest.raises(TaskDataError, match=r"no label column 'score'; the header's columns are 'text', 'label'"):
        load_task("sentiment", path, columns=Columns(label="score"))
    jsonl = write(tmp_path / "j" / "train.jsonl", '{"body": "fine", "tag": "ok"}\n' * 10)
    assert set(load_task("sentiment", jsonl, columns=Columns("body", "tag")).train) == {TextExample("fine", "ok")}
    with pytest.raises(TaskDataError, match=r"keys: 'body', 'tag'.*--text-column"):
        load_task("sentiment", jsonl)


def test_fingerprint_changes_with_any_example(tmp_path: Path) -> None:
    first = load_task("sentiment", write(tmp_path / "a" / "train.csv", "text,label\n" + "fine,1\nbad,0\n" * 10))
    same = load_task("sentiment", write(tmp_path / "b" / "train.csv", "text,label\n" + "fine,1\nbad,0\n" * 10))
    other = load_task("sentiment", write(tmp_path / "c" / "train.csv", "text,label\n" + "fine,1\nbad,1\n" * 10))
    assert first.fingerprint() == same.fingerprint() != other.fingerprint()


def test_tsv_with_index_id_like_sib200(tmp_path: Path) -> None:
    train = ('index_id\tcategory\ttext\n'
             '431\tgeography\tIt-Turkija hija mdawra bl-ibħra.\n'
             '12\tsports\t"Qal ""iva"", u telaq."\n'
             '99\ttravel\tL-ajruport, il-port.\n')
    folder = text_folder(tmp_path, train, "index_id\tcategory\ttext\n1\tsports\tx\n",
                         "index_id\tcategory\ttext\n2\ttravel\ty\n", suffix=".tsv")
    write(folder / "labels.txt", "travel\nsports\ngeography\nhealth\n")
    data = load_task("topic", folder)
    assert data.train == (
        TextExample("It-Turkija hija mdawra bl-ibħra.", "geography"),
        TextExample('Qal "iva", u telaq.', "sports"),
        TextExample("L-ajruport, il-port.", "travel"),
    )
    assert data.labels == ("travel", "sports", "geography", "health")


def test_labels_txt_must_cover_train_labels(tmp_path: Path) -> None:
    folder = text_folder(tmp_path, "a,x\nb,y\n", "a,z\n", "b,w\n")
    write(folder / "labels.txt", "a\n")
    with pytest.raises(TaskDataError, match=r"'b' occurs in train .* but not in .*labels\.txt"):
        load_task("topic", folder)


def test_jsonl_fields_and_integer_labels(tmp_path: Path) -> None:
    train = "\n".join(json.dumps(r) for r in (
        {"text": "one", "label": 1}, {"sentence": "two", "category": "0"}, {"text": "three", "label": 0, "id": 3},
    )) + "\n\n"
    folder = text_folder(tmp_path, train, json.dumps({"text": "d", "label": 1}),
                         json.dumps({"text": "t", "label": 0}), suffix=".jsonl")
    data = load_task("sentiment", folder)
    assert data.train == (TextExample("one", "1"), TextExample("two", "0"), TextExample("three", "0"))
    bad = write(tmp_path / "bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": [1]}\n')
    with pytest.raises(TaskDataError, match=rf"{bad}:2: expected a string or integer 'label' or 'category'"):
        load_task("sentiment", bad)
    broken = write(tmp_path / "broken.jsonl", '{"text": "a", "label": 1}\n{"text": \n')
    with pytest.raises(TaskDataError, match=rf"{broken}:2: not valid JSON"):
        load_task("sentiment", broken)


# --- splits ------------------------------------------------------------------------------------


def test_split_files_recognised_by_name(tmp_path: Path) -> None:
    for name, word in (("mt_x-ud-train.conllu", "a"), ("mt_x-ud-validation.conllu", "b"), ("mt_x-ud-test.conllu", "c")):
        write(tmp_path / name, conllu([("1", word, "NOUN")]))
    write(tmp_path / "README.md", "not data")
    write(tmp_path / "notes-train.txt", "wrong suffix for pos")
    data = load_task("pos", tmp_path)
    assert [ex.words for ex in (*data.train, *data.dev, *data.test)] == [("a",), ("b",), ("c",)]


def test_ambiguous_or_missing_split_files_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a" / "train.csv", "x,1\n")
    write(tmp_path / "a" / "train2.csv", "y,1\n")
    with pytest.raises(TaskDataError, match=r"several train files \(train\.csv, train2\.csv\)"):
        load_task("topic", tmp_path / "a")
    write(tmp_path / "b" / "dev.csv", "x,1\n")
    write(tmp_path / "b" / "test.csv", "y,1\n")
    with pytest.raises(TaskDataError, match=r"no train file for task topic.*dev\.csv, test\.csv"):
        load_task("topic", tmp_path / "b")
    with pytest.raises(TaskDataError, match=r"does not exist"):
        load_task("topic", tmp_path / "nowhere")
    with pytest.raises(TaskDataError, match=r"Unknown task 'parse'"):
        load_task("parse", tmp_path / "b")


def test_single_file_split_80_10_10_deterministic_by_seed(tmp_path: Path) -> None:
    rows = [f"{'ab'[i % 2]},text number {i}" for i in range(50)]
    path = write(tmp_path / "all.csv", "\n".join(rows) + "\n")
    first = load_task("sentiment", path, seed=3)
    assert (len(first.train), len(first.dev), len(first.test)) == (40, 5, 5)
    assert load_task("sentiment", path, seed=3) == first
    other = load_task("sentiment", path, seed=4)
    assert (other.dev, other.test) != (first.dev, first.test)
    texts = sorted(ex.text for ex in (*first.train, *first.dev, *first.test))
    assert texts == sorted(f"text number {i}" for i in range(50))
    numbers = [int(ex.text.rsplit(" ", 1)[1]) for ex in first.train]
    assert numbers == sorted(numbers)  # file order kept within a split


def test_train_and_test_only_gets_dev_from_train(tmp_path: Path) -> None:
    write(tmp_path / "train.csv", "".join(f"{i % 3},t{i}\n" for i in range(30)))
    write(tmp_path / "test.csv", "0,u\n1,v\n")
    data = load_task("topic", tmp_path, seed=1)
    assert (len(data.train), len(data.dev), len(data.test)) == (27, 3, 2)
    assert not {ex.text for ex in data.dev} & {ex.text for ex in data.train}


def test_too_few_examples_to_split(tmp_path: Path) -> None:
    path = write(tmp_path / "tiny.csv", "a,x\nb,y\n")
    with pytest.raises(TaskDataError, match=r"only 2 examples: too few to hold out dev and test"):
        load_task("topic", path)


# --- label and emptiness checks ----------------------------------------------------------------


def test_label_unseen_in_train_is_refused_with_split_and_file(tmp_path: Path) -> None:
    folder = text_folder(tmp_path, "pos,a\nneg,b\n", "pos,c\n", "neutral,d\n")
    with pytest.raises(TaskDataError) as error:
        load_task("sentiment", folder)
    message = str(error.value)
    assert "'neutral'" in message and "test" in message and str(folder / "test.csv") in message
    assert "cannot predict" in message


def test_empty_split_and_empty_file(tmp_path: Path) -> None:
    folder = text_folder(tmp_path / "a", "text,label\nx,1\n", "text,label\n", "text,label\ny,1\n")
    with pytest.raises(TaskDataError, match=rf"The dev split is empty: {folder / 'dev.csv'} has no examples"):
        load_task("sentiment", folder)
    folder = text_folder(tmp_path / "b", "x,1\n", "y,1\n", "  \n\n")
    with pytest.raises(TaskDataError, match=rf"{folder / 'test.csv'} is empty"):
        load_task("sentiment", folder)
    conll = write(tmp_path / "c" / "train.conllu", "# only a comment\n\n")
    with pytest.raises(TaskDataError, match=r"The train split is empty: .*train\.conllu"):
        load_task("pos", conll)


# --- hub ---------------------------------------------------------------------------------------


def test_hub_offline_fails_fast_before_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("datasets must not be called"))
    start = time.monotonic()
    with pytest.raises(TaskDataError, match=r"hub:wikiann:sw needs network access.*HF_HUB_OFFLINE.*local folder"):
        load_task("ner", "hub:wikiann:sw")
    assert time.monotonic() - start < 10


def test_hub_columns_and_class_label_names_are_mapped(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    tags = datasets.ClassLabel(names=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    strings = datasets.Sequence(datasets.Value("string"))
    features = datasets.Features({"tokens": strings, "ner_tags": datasets.Sequence(tags), "langs": strings})

    def split(rows: list[tuple[list[str], list[int]]]) -> datasets.Dataset:
        return datasets.Dataset.from_dict({"tokens": [r[0] for r in rows], "ner_tags": [r[1] for r in rows],
                                           "langs": [["sw"] * len(r[0]) for r in rows]}, features=features)

    ner = datasets.DatasetDict(train=split([(["Juma", "Kikwete", "yuko"], [2, 2, 0]), (["Dodoma"], [3])]),
                               validation=split([(["Amina"], [1])]), test=split([(["Arusha", "mjini"], [3, 0])]))
    sib = datasets.DatasetDict({name: datasets.Dataset.from_dict(
        {"index_id": [1, 2], "category": ["sports", "travel"], "text": [f"{name} a", f"{name} b"]})
        for name in ("train", "validation", "test")})
    calls = []

    def fake_load(name: str, config: str | None = None) -> datasets.DatasetDict:
        calls.append((name, config))
        return ner if name == "wikiann" else sib

    monkeypatch.setattr(tasks, "offline_reason", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_task("ner", "hub:wikiann:sw")
    assert data.train[0] == TokenExample(("Juma", "Kikwete", "yuko"), ("B-PER", "I-PER", "O"))  # IOB1 -> IOB2
    assert data.labels == ("O", "B-PER", "I-PER", "B-LOC", "I-LOC") and data.source == "hub:wikiann:sw"
    topic = load_task("topic", "hub:Davlan/sib200:swh_Latn")
    assert topic.dev == (TextExample("validation a", "sports"), TextExample("validation b", "travel"))
    assert calls == [("wikiann", "sw"), ("Davlan/sib200", "swh_Latn")]

    ner["test"] = datasets.Dataset.from_dict({"tokens": [["a", "b"]], "ner_tags": [[0]]})
    with pytest.raises(TaskDataError, match=r"hub:wikiann:sw \[test\] row 0: 2 words but 1 tags"):
        load_task("ner", "hub:wikiann:sw")


# --- the real shared data ----------------------------------------------------------------------

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data folder {SHARED_DATA} is absent")


@pytest.mark.shared_data
@needs_shared
def test_real_ud_maltese_mudt() -> None:
    data = load_task("pos", SHARED_DATA / "ud_mlt_mudt")
    assert (len(data.train), len(data.dev), len(data.test)) == (1123, 433, 518)
    assert sum(len(ex.words) for ex in data.train) == 22880
    assert sorted(data.labels) == ["ADJ", "ADP", "ADV", "AUX", "CCONJ", "DET", "INTJ", "NOUN", "NUM", "PART",
                                   "PRON", "PROPN", "PUNCT", "SCONJ", "SYM", "VERB", "X"]


@pytest.mark.shared_data
@needs_shared
def test_real_swahili_wikiann() -> None:
    data = load_task("ner", SHARED_DATA / "ner_swh_wikiann")
    assert (len(data.train), len(data.dev), len(data.test)) == (1000, 1000, 1000)
    assert sorted(data.labels) == sorted(["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"])
    counts = Counter(tag for example in data.train for tag in example.tags)
    assert (counts["B-LOC"], counts["B-ORG"], counts["B-PER"]) == (447, 319, 445)


@pytest.mark.shared_data
@needs_shared
def test_real_sib200_maltese() -> None:
    data = load_task("topic", SHARED_DATA / "sib200_mlt_Latn")
    assert (len(data.train), len(data.dev), len(data.test)) == (701, 99, 204)
    assert data.labels == ("science/technology", "travel", "politics", "sports", "health", "entertainment",
                           "geography")
    assert Counter(example.label for example in data.train).most_common(1) == [("science/technology", 176)]
    assert Counter(example.label for example in data.test)["science/technology"] == 51


@pytest.mark.shared_data
@needs_shared
def test_real_maltese_sentiment() -> None:
    data = load_task("sentiment", SHARED_DATA / "sentiment_mlt")
    assert (len(data.train), len(data.dev), len(data.test)) == (595, 85, 171)
    assert sorted(data.labels) == ["0", "1"]
    assert Counter(ex.label for ex in data.train) == {"0": 413, "1": 182}
    assert sum("\n" in ex.text for ex in data.train) == 2
    assert Counter(ex.label for ex in data.test)["0"] == 111


def test_default_epochs_see_about_the_budget_within_two_and_the_tasks_maximum():
    ner = task_kind("ner")
    assert ner.epochs_for(701) == ner.epochs == 10  # SIB-200: the maximum
    assert ner.epochs_for(6_900) == 2  # MasakhaNER: about 15k examples
    assert ner.epochs_for(3_000) == 5
    assert ner.epochs_for(100_000) == 2 and ner.epochs_for(0) == 10
