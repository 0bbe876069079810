"""Trains the shipped SentencePiece model, `tokenizers/rationale_sp.model`, from generated text.

Usage (from the repository root)::

    python tokenizers/train_tokenizer.py [--out_dir tokenizers]

The training text is generated here, nothing is downloaded:

- the synthetic rationale corpus (`t5x_rationale.data.synthetic`, train split, default seed):
  each row's plain-text view, its rationales and negatives, and the task formats the methods
  feed the model ("predict: ...", "explain: ...", "... --> 42", "... ###", Quiet-STaR thoughts);
- generic English sentences built from the small word lists in this file, so questions
  outside the corpus (other word problems, user data) still get whole-word pieces.

The model is a unigram model with pad 0, eos 1, unk 2, no bos, digits split into single
pieces, and byte fallback (any text encodes without unk). Training is single-threaded with
all input sentences in a fixed order, so a rerun writes the same pieces.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from typing import Iterator

import numpy as np
import sentencepiece as spm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script from a checkout that is not pip-installed
    sys.path.insert(0, REPO_ROOT)

from t5x_rationale.data import synthetic  # noqa: E402

MODEL_PREFIX = "rationale_sp"
VOCAB_SIZE = 2048  # the training text supports at most ~2190 pieces
# Quiet-STaR thought start / end, the chain-of-thought answer separator, a section rule, and
# the decoder-only prompt suffix of the CoT tasks. Each is always one piece.
SPECIAL_PIECES = ("<thought>", "</thought>", "-->", "---", "###")
CORPUS_ROWS = 6000
GENERIC_SENTENCES = 30000
SEED = 0

# ---------------------------------------------------------------------------- word lists
# Everyday English for the generic sentences, written for this script. Irregular forms are
# spelled out after colons ("child:children", "buy:bought", "plan:planned:planning").

NOUN_WORDS = """
family child:children person:people woman:women man:men baby:babies student teacher farmer driver
worker friend neighbor doctor nurse baker player team class company store shop market library school
city town village country river mountain forest garden park road street bridge house room kitchen
door window table chair book page letter story question answer problem idea plan reason step number
price cost dollar cent coin bill ticket box bag basket bottle cup glass plate bowl piece slice pizza
cake pie apple orange banana egg potato tomato carrot onion flower tree seed leaf:leaves animal dog
cat bird fish:fish horse cow chicken sheep:sheep goat rabbit duck pig mouse:mice car bus train bike
boat plane truck trip mile kilometer meter hour minute second day week month year morning evening
afternoon night game song movie picture phone computer machine tool paper pencil shirt shoe hat
dress jacket coat sock glove gift party meal dinner lunch breakfast recipe cookie candy toy ball
card stamp sticker marble shell stone brick wall floor roof field farm lake beach island museum
hospital office factory job task test score point goal race lesson word sentence language result
total half:halves third quarter percent:percent fraction group row pair dozen batch gallon liter
pound kilogram gram ounce inch foot:feet yard salary profit discount tax fee rent loan budget
account bank wallet purse pocket coupon receipt order delivery package envelope shelf:shelves drawer
cupboard closet bed blanket pillow towel soap brush bucket ladder hammer nail screw rope wire
battery lamp candle clock watch calendar map notebook folder ruler eraser marker crayon paint
painting drawing photo camera radio television screen keyboard printer ink desk board chalk bell
uniform backpack lunchbox sandwich salad soup bread:bread butter:butter cheese milk:milk juice:juice
water:water tea:tea coffee:coffee sugar:sugar salt:salt pepper flour:flour rice:rice pasta:pasta
bean corn:corn grape lemon melon peach pear plum cherry berry:berries strawberry:strawberries nut
cookie muffin cupcake pancake waffle biscuit cracker chip snack dessert jar can tin carton crate
barrel tank pool pond fountain stream hill valley desert field meadow fence gate path trail tunnel
station airport harbor ship ferry taxi wagon tractor engine wheel tire seat ticket passenger pilot
captain sailor guard officer chef waiter cashier manager owner customer client guest visitor member
coach referee judge artist musician singer dancer writer author reader scientist engineer builder
painter plumber carpenter gardener librarian clerk mechanic tailor barber dentist pharmacist vet
cook grandmother grandfather mother father parent sister brother aunt uncle cousin daughter son
wife:wives husband kid classmate partner player fan crowd audience club choir band orchestra concert
show festival fair contest match tournament season holiday weekend vacation birthday wedding picnic
journey tour visit walk run swim ride flight lap mile distance speed height weight length width area
volume amount quantity size level rate ratio average sum difference product quotient remainder
multiple digit figure chart table graph list set pattern shape circle square triangle rectangle line
corner edge side surface center middle top bottom front back inside outside north south east west
left right beginning end start finish minute deadline schedule plan system method rule example
exercise homework:homework project report essay chapter topic subject science history music:music
art math:math reading spelling:spelling grammar:grammar lesson course grade exam quiz:quizzes mark
prize medal trophy reward
"""
VERB_WORDS = """
buy:bought sell:sold make:made take:took give:gave find:found keep:kept bring:brought need want use
build:built paint clean cook bake plant pick collect count share split:split:splitting divide add
remove pack carry move fix open close read:read write:wrote draw:drew visit watch order rent save
spend:spent earn pay:paid borrow lend:lent lose:lost win:won:winning fill empty measure weigh
choose:chose prepare deliver sort repair check record walk run:ran:running swim:swam:swimming
ride:rode drive:drove fly:flew sail climb jump throw:threw catch:caught kick hit:hit:hitting play
sing:sang dance laugh smile cry talk speak:spoke say:said tell:told ask answer explain describe show
teach:taught learn study practice train help start finish begin:began:beginning
stop:stopped:stopping wait stay leave:left arrive return travel visit cross turn push pull lift
drop:dropped:dropping hold:held send:sent receive invite join meet:met greet thank call phone text
email print copy type click search look see:saw hear:heard feel:felt touch smell taste eat:ate
drink:drank sleep:slept wake:woke rest dream think:thought know:knew remember
forget:forgot:forgetting believe hope wish plan:planned:planning decide agree guess wonder notice
compare estimate calculate solve multiply subtract round double:doubled triple increase decrease
reduce raise lower grow:grew shrink:shrank cut:cut:cutting slice chop:chopped:chopping mix
stir:stirred:stirring pour boil fry roast grill serve taste wrap:wrapped:wrapping tie fold hang:hung
stack pile load unload ship:shipped:shipping package label mark paint wash dry iron sew:sewed
knit:knitted:knitting build:built design invent discover explore protect guard rescue feed:fed water
harvest gather store
"""
ADJECTIVE_WORDS = """
small large big little old new young long short tall wide narrow heavy light full empty red blue
green yellow white black brown orange purple pink gray golden silver bright dark quiet loud busy
happy sad tired careful quick slow early late cheap expensive fresh warm cold hot cool sweet sour
salty round square flat local favorite whole extra equal same different other next last first second
third final daily weekly monthly yearly usual special simple hard easy clean dirty wooden plastic
metal glass paper soft smooth rough sharp thick thin deep shallow high low near far huge tiny strong
weak rich poor kind friendly polite honest brave clever smart proud calm angry nervous excited
surprised hungry thirsty sick healthy safe dangerous famous popular modern ancient ready able free
open closed correct wrong true false possible important useful careful helpful colorful beautiful
pretty ugly noisy crowded lonely lucky
"""
ADVERBS = (
    "quickly",
    "slowly",
    "carefully",
    "usually",
    "often",
    "always",
    "sometimes",
    "never",
    "together",
    "again",
    "early",
    "later",
    "today",
    "tomorrow",
    "yesterday",
    "every day",
    "each week",
    "at once",
    "in total",
    "in the end",
    "exactly",
    "nearly",
    "almost",
    "only",
    "already",
    "still",
    "finally",
    "quietly",
    "happily",
    "easily",
    "loudly",
    "gently",
    "evenly",
    "equally",
    "fairly",
    "barely",
    "twice",
    "once",
)
PLACES = (
    "at the market",
    "in the garden",
    "at school",
    "near the river",
    "in the city",
    "at home",
    "on the farm",
    "in the kitchen",
    "at the library",
    "in the park",
    "at the store",
    "on the way to work",
    "at the beach",
    "in the village",
    "at the museum",
    "in the office",
    "at the factory",
    "by the lake",
    "at the station",
    "in the classroom",
    "behind the house",
    "across the street",
    "under the bridge",
    "inside the box",
)
TIMES = (
    "On Monday",
    "On Tuesday",
    "On Wednesday",
    "On Thursday",
    "On Friday",
    "On Saturday",
    "On Sunday",
    "In January",
    "In February",
    "In March",
    "In April",
    "In May",
    "In June",
    "In July",
    "In August",
    "In September",
    "In October",
    "In November",
    "In December",
    "Last week",
    "This morning",
    "After lunch",
    "Before dinner",
    "Every weekend",
    "During the holidays",
    "At night",
    "Next year",
    "Last summer",
    "In the spring",
    "In the winter",
    "Every afternoon",
    "Twice a week",
)
FIRST_NAMES = """
Anna David Lena Marco Julia Peter Nina Carlos Sophie James Eva Daniel Alice Bruno Chloe Dmitri
Esther Felix Gloria Hugo Irene Jack Karen Lars Monica Nathan Oscar Paula Quentin Rachel Simon Teresa
Umar Victor Wendy Xavier Yasmin Zoe Abdul Bianca Cyrus Dalia Emil Farah George Helen Isaac Jasmine
Kevin Lucy Martin Naomi Oliver Patricia Rafael Selma Thomas Ursula Vera William Amir Beatrice Caleb
Diana Ethan Fiona Gabriel Hannah Ibrahim Joanna Kamal Laura Mohammed Nora Owen Pedro Rita Stefan
Tanya Uma Vincent Yara
"""
SUBJECT_PHRASES = (
    "The teacher",
    "The farmer",
    "Her brother",
    "His sister",
    "Our neighbor",
    "The baker",
    "My friend",
    "The class",
    "The company",
    "Their team",
    "The shop owner",
    "Each student",
)
CONNECTIVES = (
    "because",
    "so",
    "but",
    "and",
    "while",
    "after",
    "before",
    "although",
    "when",
    "until",
    "since",
)
QUESTION_WORDS = (
    "How many",
    "How much",
    "What fraction of the",
    "How long",
    "How far",
    "What percent of the",
)
MODALS = ("will", "can", "should", "must", "might", "could", "would")


def _words(text: str) -> list[list[str]]:
    """Entries of a word list: each a list of its spelled-out forms."""
    return [entry.split(":") for entry in text.split()]


def _plural(entry: list[str]) -> str:
    """The plural of a noun entry (given after a colon, else by the regular rules)."""
    word = entry[0]
    if len(entry) > 1:
        return entry[1]
    if word.endswith("y") and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")) or word in ("potato", "tomato", "hero"):
        return word + "es"
    return word + "s"


def _verb_forms(entry: list[str]) -> tuple[str, str, str, str]:
    """(base, third person, past, -ing) of a verb entry."""
    base = entry[0]
    if base.endswith("y") and base[-2] not in "aeiou":
        third, regular_past = base[:-1] + "ies", base[:-1] + "ied"
    elif base.endswith(("s", "x", "ch", "sh", "o")):
        third, regular_past = base + "es", base + "ed"
    else:
        third, regular_past = base + "s", base + ("d" if base.endswith("e") else "ed")
    past = entry[1] if len(entry) > 1 else regular_past
    if len(entry) > 2:
        ing = entry[2]
    elif base.endswith("ie"):
        ing = base[:-2] + "ying"
    elif base.endswith("e") and not base.endswith(("ee", "ye", "oe")):
        ing = base[:-1] + "ing"
    else:
        ing = base + "ing"
    return base, third, past, ing


NOUNS = tuple((entry[0], _plural(entry)) for entry in _words(NOUN_WORDS))
VERBS = tuple(_verb_forms(entry) for entry in _words(VERB_WORDS))
ADJECTIVES = tuple(entry[0] for entry in _words(ADJECTIVE_WORDS))
SUBJECTS = tuple(FIRST_NAMES.split()) + SUBJECT_PHRASES


# ---------------------------------------------------------------------------- training text


class _Picker:
    """Random choices from a seeded numpy Generator."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def pick(self, options):
        return options[int(self.rng.integers(len(options)))]

    def number(self) -> str:
        """A number the way word problems write it: 7, 1,250, 3.5, $12, 40%, 3/4."""
        kind = int(self.rng.integers(6))
        value = int(self.rng.integers(1, 2000))
        return (
            str(value),
            f"{value:,}",
            f"{value // 10}.{value % 10}",
            f"${value}",
            f"{value % 100}%",
            f"{value % 9 + 1}/{value % 7 + 2}",
        )[kind]


def _subject(p: _Picker, *, mid_sentence: bool = False) -> str:
    """A name or a noun phrase such as "the teacher" (lower-cased inside a sentence)."""
    subject = p.pick(SUBJECTS)
    return (
        subject[0].lower() + subject[1:] if mid_sentence and subject in SUBJECT_PHRASES else subject
    )


def _generic_sentence(p: _Picker) -> str:
    """One everyday English sentence: a statement, a compound sentence, or a question."""
    noun, nouns = p.pick(NOUNS)
    _, others = p.pick(NOUNS)
    base, third, past, ing = p.pick(VERBS)
    base2, _, past2, ing2 = p.pick(VERBS)
    adj, adj2 = p.pick(ADJECTIVES), p.pick(ADJECTIVES)
    kind = int(p.rng.integers(8))
    if kind == 0:
        return (
            f"{_subject(p)} {third} {p.number()} {adj} {nouns} {p.pick(PLACES)} {p.pick(ADVERBS)}."
        )
    if kind == 1:
        return (
            f"{p.pick(TIMES)}, {_subject(p, mid_sentence=True)} {past} the {adj} {noun} "
            f"{p.pick(CONNECTIVES)} {_subject(p, mid_sentence=True)} "
            f"{past2} {p.number()} {adj2} {others}."
        )
    if kind == 2:
        return (
            f"{p.pick(QUESTION_WORDS)} {nouns} does {_subject(p, mid_sentence=True)} {base} "
            f"if each {p.pick(NOUNS)[0]} holds {p.number()} {others}?"
        )
    if kind == 3:
        return (
            f"The {adj} {noun} is {p.number()} {p.pick(NOUNS)[1]} long, and the {adj2} one is "
            f"{p.number()} shorter."
        )
    if kind == 4:
        return (
            f"There are {p.number()} {nouns} {p.pick(PLACES)}; "
            f"{_subject(p, mid_sentence=True)} {past} "
            f"{p.number()} of them {p.pick(ADVERBS)}."
        )
    if kind == 5:
        return (
            f"{_subject(p)} is {ing} the {adj} {nouns} while {_subject(p, mid_sentence=True)} is "
            f"{ing2} {p.pick(PLACES)}."
        )
    if kind == 6:
        return (
            f"{_subject(p)} {p.pick(MODALS)} {base} {p.number()} {nouns} {p.pick(ADVERBS)}, "
            f"{p.pick(CONNECTIVES)} the {others} are {adj2}."
        )
    return f"Why did {_subject(p, mid_sentence=True)} {base2} the {adj} {noun} {p.pick(PLACES)}?"


def _corpus_lines(rows: list[dict]) -> Iterator[str]:
    """Training lines from the synthetic corpus in the formats the methods feed the model."""
    for i, row in enumerate(rows):
        question, label = row["input"], row["label"]
        yield synthetic.plain_text(row, i % len(row["rationales"]))
        yield f"predict: {question}"
        yield f"explain: {question}"
        yield f"{question} ###"
        for rationale in row["rationales"]:
            yield f"{rationale} --> {label}"
        for negative, wrong in zip(row["negatives"], row["negative_labels"]):
            yield f"{negative} --> {wrong}"
        first, _, rest = row["rationales"][0].partition(". ")
        yield f"{question} <thought> {first}. </thought> {rest} --- {label}"


def training_sentences(
    corpus_rows: int = CORPUS_ROWS, generic_sentences: int = GENERIC_SENTENCES, seed: int = SEED
) -> list[str]:
    """All training sentences, in a fixed order."""
    rows = synthetic.generate_split("train", num_examples=corpus_rows, seed=seed)
    picker = _Picker(seed)
    return list(_corpus_lines(rows)) + [_generic_sentence(picker) for _ in range(generic_sentences)]


# ---------------------------------------------------------------------------- training


def train_model(
    vocab_size: int = VOCAB_SIZE,
    *,
    corpus_rows: int = CORPUS_ROWS,
    generic_sentences: int = GENERIC_SENTENCES,
    seed: int = SEED,
) -> bytes:
    """The serialized model. It holds no file paths, so the bytes depend only on the arguments."""
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(training_sentences(corpus_rows, generic_sentences, seed)),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        user_defined_symbols=list(SPECIAL_PIECES),
        byte_fallback=True,
        split_digits=True,
        character_coverage=1.0,
        normalization_rule_name="identity",  # decode(encode(text)) == text for any text
        remove_extra_whitespaces=False,
        input_sentence_size=0,  # every sentence, in order: no sampling
        shuffle_input_sentence=False,
        num_threads=1,  # the same sums in the same order on every run
        minloglevel=2,
    )
    return model.getvalue()


def write_model(model: bytes, out_dir: str) -> str:
    """Writes `rationale_sp.model` and `rationale_sp.vocab` (piece, tab, score per line);
    returns the model path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, MODEL_PREFIX + ".model")
    with open(path, "wb") as f:
        f.write(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    with open(os.path.join(out_dir, MODEL_PREFIX + ".vocab"), "w", encoding="utf-8") as f:
        for i in range(processor.get_piece_size()):
            f.write(f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n")
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out_dir", default=os.path.join(REPO_ROOT, "tokenizers"))
    parser.add_argument("--vocab_size", type=int, default=VOCAB_SIZE)
    args = parser.parse_args(argv)
    start = time.time()
    path = write_model(train_model(args.vocab_size), args.out_dir)
    print(f"wrote {path} ({args.vocab_size} pieces) in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
