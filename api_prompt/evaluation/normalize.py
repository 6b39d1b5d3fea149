"""Answer normalisations of the official scorers: the VQA challenge's (as lmms-eval runs it for
TextVQA and, differently, for VQAv2) and lmms-eval's ``exact_match`` (GQA).

:func:`normalize_answer` is lmms-eval's ``EvalAIAnswerProcessor()(answer)`` (TextVQA):

1. lower case; commas and question marks dropped; ``'s`` split off (``"dog's"`` -> ``"dog 's"``);
   newlines and tabs become spaces;
2. punctuation: each mark of :data:`PUNCTUATION` is deleted when it touches a space (or when the
   text holds a number with a thousands comma), and replaced by a space otherwise; a full stop
   that is not part of a number is deleted;
3. number words ``none``/``zero`` .. ``ten`` become digits, the articles ``a an the`` are dropped;
4. contractions written without their apostrophe get it back (``"dont"`` -> ``"don't"``).

:func:`normalize_vqav2_answer` is what lmms-eval's VQAv2 ``process_results`` does instead: newlines
and tabs become spaces and the ends are stripped, then steps 2-4 only. Step 1 is skipped, so a
comma is punctuation (``"red,white"`` -> ``"red white"``, where TextVQA gives ``"redwhite"``) and
``'s`` stays attached; the text is lower-cased in step 3.

:func:`exact_match_text` is the form lmms-eval's ``exact_match`` compares with ``ignore_case`` and
``ignore_punctuation`` (GQA): lower case, every ``string.punctuation`` mark deleted, nothing else.

>>> normalize_answer("Two dogs.")
'2 dogs'
>>> normalize_answer("A dog"), normalize_answer("the dog's ball?")
('dog', "dog 's ball")
>>> normalize_answer("1,000"), normalize_answer("yes/no"), normalize_answer("dont")
('1000', 'yes no', "don't")
>>> normalize_answer("red,white"), normalize_vqav2_answer("red,white"), normalize_vqav2_answer("Dog's?")
('redwhite', 'red white', "dog's")
>>> exact_match_text("A dog."), exact_match_text("two")
('a dog', 'two')
"""

from __future__ import annotations

import re
import string
from functools import lru_cache

__all__ = [
    "normalize_answer",
    "normalize_vqav2_answer",
    "exact_match_text",
    "PUNCTUATION",
    "NUMBER_WORDS",
    "ARTICLES",
    "CONTRACTIONS",
]

#: Marks handled by step 2 (the full stop is handled separately: it may be a decimal point).
PUNCTUATION = tuple(';/[]"{}()=+\\_-><@`,?!')
NUMBER_WORDS = {
    word: str(value)
    for value, word in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    )
}
NUMBER_WORDS["none"] = "0"
ARTICLES = frozenset({"a", "an", "the"})

# The challenge's table of contractions, as "written-without -> written-with" pairs. Entries whose
# key has a capital letter can never match (the text is lower-cased first); they are kept so the
# table is the official one.
_CONTRACTION_PAIRS = """
aint ain't|arent aren't|cant can't|couldve could've|couldnt couldn't|couldn'tve couldn't've
couldnt've couldn't've|didnt didn't|doesnt doesn't|dont don't|hadnt hadn't|hadnt've hadn't've
hadn'tve hadn't've|hasnt hasn't|havent haven't|hed he'd|hed've he'd've|he'dve he'd've|hes he's
howd how'd|howll how'll|hows how's|Id've I'd've|I'dve I'd've|Im I'm|Ive I've|isnt isn't|itd it'd
itd've it'd've|it'dve it'd've|itll it'll|let's let's|maam ma'am|mightnt mightn't
mightnt've mightn't've|mightn'tve mightn't've|mightve might've|mustnt mustn't|mustve must've
neednt needn't|notve not've|oclock o'clock|oughtnt oughtn't|ow's'at 'ow's'at|'ows'at 'ow's'at
'ow'sat 'ow's'at|shant shan't|shed've she'd've|she'dve she'd've|she's she's|shouldve should've
shouldnt shouldn't|shouldnt've shouldn't've|shouldn'tve shouldn't've|somebody'd somebodyd
somebodyd've somebody'd've|somebody'dve somebody'd've|somebodyll somebody'll|somebodys somebody's
someoned someone'd|someoned've someone'd've|someone'dve someone'd've|someonell someone'll
someones someone's|somethingd something'd|somethingd've something'd've
something'dve something'd've|somethingll something'll|thats that's|thered there'd
thered've there'd've|there'dve there'd've|therere there're|theres there's|theyd they'd
theyd've they'd've|they'dve they'd've|theyll they'll|theyre they're|theyve they've|twas 'twas
wasnt wasn't|wed've we'd've|we'dve we'd've|weve we've|werent weren't|whatll what'll
whatre what're|whats what's|whatve what've|whens when's|whered where'd|wheres where's
whereve where've|whod who'd|whod've who'd've|who'dve who'd've|wholl who'll|whos who's
whove who've|whyll why'll|whyre why're|whys why's|wont won't|wouldve would've|wouldnt wouldn't
wouldnt've wouldn't've|wouldn'tve wouldn't've|yall y'all|yall'll y'all'll|y'allll y'all'll
yall'd've y'all'd've|y'alld've y'all'd've|y'all'dve y'all'd've|youd you'd|youd've you'd've
you'dve you'd've|youll you'll|youre you're|youve you've
"""
CONTRACTIONS = dict(
    pair.split(" ") for pair in re.split(r"[|\n]", _CONTRACTION_PAIRS.strip()) if pair
)

_THOUSANDS_COMMA = re.compile(r"(?<=\d),+(?=\d)")
# A full stop not followed by a digit. The official pattern's lookbehind is misspelt "(?!<=\d)",
# which makes it a (vacuous) lookahead, so a stop after a digit is removed too: kept as it is.
_STOP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call passes re.UNICODE (= 32) as sub()'s positional *count*: at most 32 stops go.
_STOP_COUNT = 32


def _punctuation(text: str) -> str:
    has_number_comma = _THOUSANDS_COMMA.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if has_number_comma or mark + " " in text or " " + mark in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _STOP.sub("", out, count=_STOP_COUNT)


def _digits_and_articles(text: str) -> str:
    words = [NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    return " ".join(CONTRACTIONS.get(word, word) for word in words if word not in ARTICLES)


@lru_cache(maxsize=65536)
def normalize_answer(answer: str) -> str:
    """``answer`` normalised as the VQA challenge's evaluation does (see the module docstring)."""
    text = str(answer).lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


@lru_cache(maxsize=65536)
def normalize_vqav2_answer(answer: str) -> str:
    """``answer`` as lmms-eval's VQAv2 scorer normalises it (see the module docstring)."""
    text = str(answer).replace("\n", " ").replace("\t", " ").strip()
    return _digits_and_articles(_punctuation(text))


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def exact_match_text(text: str) -> str:
    """``text`` as lmms-eval's ``exact_match`` compares it with ``ignore_case`` and ``ignore_punctuation``.

    The comparison runs on numpy string arrays: lower-casing keeps the length of the original
    (``"İ"`` lower-cases to two characters, and the last one is cut off), and trailing NUL
    characters do not count.
    """
    text = str(text)
    return text.lower()[: len(text)].translate(_NO_PUNCTUATION).rstrip("\x00")
