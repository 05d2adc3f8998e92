"""The tiny world's corpus: short English movie reviews from a seeded template grammar.

Why a generator and not IMDB: the lab must run offline, in minutes, on a laptop. The reviews are
short (at most MAX_WORDS words, so a tiny GPT-2 ends them within 64 tokens), yet varied: a dozen
aspects, positive / negative / mixed sentiment, negation ("never boring", "wasn't funny"), contrast
("..., but", "Although ...", "Still, ..."), plot summaries and viewing anecdotes with a vocabulary of
well over 1,000 words. Every sentiment word comes from lexicon.py, so the gold labeler (gold.py)
reads the same signs the generator meant.

    python -m rlhf_lab.corpus --seed 0 --out data

writes data/reviews/{train,validation}.jsonl and data/prompts/{train,validation}.jsonl,
byte-identical for the same seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

from rlhf_lab import lexicon
from rlhf_lab.utils import LabError

MAX_WORDS = 45  # a review's hard cap, in whitespace-separated words (~60 BPE tokens at most)
MIN_WORDS = 4  # the gold labeler calls anything shorter degenerate
SENTIMENT_MIX = {"positive": 0.4, "negative": 0.4, "mixed": 0.2}  # both signs, so the SFT model writes both

# -----------------------------------------------------------------------------
# word pools: aspects with the adjectives that praise or pan them


@dataclass(frozen=True)
class Aspect:
    nouns: tuple[str, ...]  # what a reviewer calls it ("score", "soundtrack"); plurals in PLURAL
    positive: tuple[str, ...]  # adjectives that praise it; each must be positive in lexicon.py
    negative: tuple[str, ...]  # adjectives that pan it; each must be negative in lexicon.py


def _t(words: str) -> tuple[str, ...]:
    """Pool from a "|"-separated string, so multi-word entries ("camera work") stay whole."""
    return tuple(w.strip() for w in words.split("|"))


ASPECTS: dict[str, Aspect] = {
    "acting": Aspect(
        _t("acting|cast|performances|lead actress|lead actor|supporting cast|ensemble|casting"),
        _t("superb|convincing|brilliant|natural|nuanced|outstanding|excellent|terrific|strong|"
           "wonderful|believable|compelling|powerful|committed|magnetic|charismatic|moving|solid|"
           "fine|impressive"),
        _t("wooden|stiff|unconvincing|awful|flat|terrible|weak|lifeless|hammy|forced|amateurish|"
           "poor|bland|overwrought|embarrassing|dreadful")),
    "plot": Aspect(
        _t("story|plot|storyline|script|screenplay|premise|narrative|writing"),
        _t("clever|gripping|original|engaging|compelling|intriguing|smart|tight|absorbing|fresh|"
           "inventive|riveting|fascinating|satisfying|thoughtful|suspenseful"),
        _t("predictable|confusing|silly|thin|ridiculous|messy|lazy|contrived|absurd|derivative|"
           "pointless|muddled|clumsy|convoluted|implausible|nonsensical|cliched|disjointed")),
    "music": Aspect(
        _t("music|score|soundtrack|songs|main theme"),
        _t("beautiful|haunting|lovely|memorable|stirring|gorgeous|catchy|wonderful|moving|rousing|"
           "perfect|sublime"),
        _t("forgettable|annoying|intrusive|grating|loud|generic|bland|irritating|overbearing|"
           "repetitive|cheesy|tepid")),
    "visuals": Aspect(
        _t("cinematography|camera work|photography|visuals|images|lighting"),
        _t("stunning|gorgeous|beautiful|breathtaking|striking|lovely|elegant|dazzling|vivid|"
           "atmospheric|exquisite|glorious"),
        _t("ugly|murky|drab|dull|cheap|muddy|dreary|flat|bland")),
    "pacing": Aspect(
        _t("pacing|pace|editing"),
        _t("brisk|tight|perfect|smooth|lively|swift|excellent|assured|effortless|crisp"),
        _t("slow|sluggish|plodding|uneven|tedious|glacial|choppy|bloated|messy|dull|tiresome")),
    "dialogue": Aspect(
        _t("dialogue|lines|conversations|banter"),
        _t("witty|sharp|clever|natural|smart|crisp|funny|charming|delightful|believable|brilliant|"
           "tender|hilarious"),
        _t("clunky|stilted|awkward|cheesy|corny|painful|awful|dumb|cringeworthy|dreadful|wooden|"
           "forced|laughable|preachy")),
    "characters": Aspect(
        _t("characters|heroine|hero|villain|protagonist|main character|supporting characters"),
        _t("likable|believable|memorable|complex|lovable|charming|fascinating|sympathetic|rich|"
           "layered|endearing|genuine"),
        _t("shallow|annoying|unlikable|bland|dull|flat|stupid|irritating|hollow|boring|"
           "forgettable|obnoxious")),
    "ending": Aspect(
        _t("ending|finale|climax|final act|last scene|twist|conclusion"),
        _t("satisfying|powerful|moving|surprising|perfect|beautiful|clever|unforgettable|touching|"
           "poignant|brilliant|thrilling"),
        _t("disappointing|rushed|weak|silly|predictable|abrupt|unsatisfying|baffling|lame|"
           "ridiculous|pointless|confusing|cheap")),
    "direction": Aspect(
        _t("direction|directing|filmmaking"),
        _t("confident|masterful|assured|skillful|inspired|careful|stylish|brilliant|elegant|bold|"
           "polished|graceful|thoughtful"),
        _t("sloppy|clumsy|lazy|aimless|pretentious|uninspired|incompetent|careless|amateurish|"
           "flat|generic")),
    "humour": Aspect(
        _t("humor|comedy|jokes|gags|sense of humor"),
        _t("hilarious|funny|clever|charming|delightful|witty|sweet|smart|playful|fresh|sharp"),
        _t("unfunny|crude|lame|tired|stale|juvenile|obnoxious|cheap|embarrassing|forced|"
           "tasteless")),
    "action": Aspect(
        _t("action|fight scenes|action scenes|chase scenes|stunts|set pieces|battle scenes|"
           "shootouts"),
        _t("thrilling|exciting|spectacular|intense|impressive|breathtaking|electrifying|"
           "exhilarating|riveting|gripping|terrific"),
        _t("boring|repetitive|messy|chaotic|incoherent|tiresome|dull|forgettable|confusing|sloppy|"
           "generic")),
    "effects": Aspect(
        _t("effects|special effects|visual effects|CGI|makeup|creature design|animation"),
        _t("impressive|stunning|seamless|amazing|convincing|spectacular|remarkable|gorgeous|"
           "flawless|dazzling"),
        _t("cheap|fake|dated|cheesy|laughable|unconvincing|terrible|awful|shoddy|ugly")),
    "setting": Aspect(
        _t("setting|production design|sets|costumes|atmosphere|locations|period detail"),
        _t("gorgeous|atmospheric|rich|immersive|lovely|authentic|evocative|beautiful|vivid|"
           "convincing|striking"),
        _t("cheap|bland|fake|drab|lifeless|generic|flimsy|shabby|unconvincing|dreary")),
}

PLURAL = frozenset(_t(
    "performances|songs|visuals|images|lines|conversations|characters|supporting characters|"
    "jokes|gags|fight scenes|action scenes|chase scenes|stunts|set pieces|battle scenes|shootouts|"
    "effects|special effects|visual effects|sets|costumes|locations"))

# Adjectives that read oddly after "very" ("very perfect"): they take "absolutely" and friends.
EXTREME = frozenset(_t(
    "perfect|flawless|superb|excellent|outstanding|brilliant|breathtaking|unforgettable|masterful|"
    "sublime|exquisite|awful|terrible|dreadful|painful|laughable|incompetent|ridiculous|pointless|"
    "spectacular|stunning|dazzling|glorious|gorgeous|hilarious|riveting|amazing|wonderful|terrific|"
    "magnificent|fantastic|unwatchable|dire|cringeworthy|nonsensical|seamless|electrifying"))
INTENSIFIERS = _t("very|really|extremely|incredibly|genuinely|remarkably|quite|so|pretty|"
                  "thoroughly|deeply|rather")
EXTREME_INTENSIFIERS = _t("absolutely|truly|utterly|simply|just")
ATTRIBUTIVE_INTENSIFIERS = _t("very|really|extremely|incredibly|genuinely|remarkably|deeply|thoroughly")
DIMINISHERS = _t("a little|a bit|slightly|somewhat|mildly|fairly")

# whole-film adjectives and nouns for verdict sentences
POSITIVE_OVERALL = _t(
    "wonderful|excellent|great|brilliant|superb|beautiful|charming|delightful|gripping|remarkable|"
    "fantastic|terrific|lovely|enjoyable|entertaining|moving|powerful|clever|memorable|touching|"
    "compelling|solid|fine|fun|stunning|magnificent|thrilling|heartwarming|refreshing|uplifting|"
    "poignant|captivating|splendid|admirable|thoughtful|endearing|impressive")
NEGATIVE_OVERALL = _t(
    "awful|terrible|horrible|dreadful|boring|dull|tedious|bad|poor|weak|lame|disappointing|"
    "forgettable|predictable|silly|pointless|pretentious|lifeless|mediocre|messy|tiresome|"
    "unwatchable|sloppy|stupid|ridiculous|embarrassing|shallow|bland|soulless|overrated|"
    "uninspired|clumsy|painful")
POSITIVE_NOUNS = _t("gem|triumph|masterpiece|treat|delight|joy to watch|real treat|pleasure to watch|"
                    "little gem|hidden gem|real pleasure|classic")
NEGATIVE_NOUNS = _t("mess|disaster|chore|letdown|disappointment|bore|failure|complete waste of time|"
                    "total mess|real disappointment|travesty|flop|waste of two hours")

# -----------------------------------------------------------------------------
# neutral pools: openers, plot summaries, people and places (none may carry sentiment)

FILM = _t("film|movie|picture")
GENRES = _t(
    "comedy|drama|thriller|horror film|western|romance|war film|musical|mystery|documentary|"
    "science fiction film|family film|crime drama|period drama|heist movie|spy thriller|"
    "animated film|ghost story|road movie|coming of age story|biopic|sports drama|romantic comedy|"
    "political thriller|courtroom drama|monster movie|buddy comedy|psychological thriller|"
    "space adventure|fantasy adventure|black comedy|murder mystery|teen comedy|slasher film|"
    "martial arts film|survival story|historical drama|detective story|fairy tale|satire")
FIRST_NAMES = _t(
    "Anna|Ben|Clara|David|Elena|Frank|Grace|Henry|Isabel|Jack|Kate|Leo|Maria|Nathan|Olivia|Paul|"
    "Rachel|Sam|Tessa|Victor|Wendy|Adam|Beatrice|Carlos|Diane|Edward|Fiona|George|Hannah|Ivan|"
    "Julia|Kevin|Laura|Marcus|Nina|Oscar|Priya|Rosa|Simon|Thomas|Yuki|Omar|Chloe|Daniel|Emma")
LAST_NAMES = _t(
    "Adams|Baker|Carter|Dawson|Evans|Fischer|Garcia|Hughes|Ito|Jensen|Kowalski|Lambert|Moreno|"
    "Novak|Okafor|Park|Quinn|Russo|Schmidt|Tanaka|Underwood|Vance|Walsh|Young|Zhang|Bennett|Cole|"
    "Duarte|Ellis|Foster|Grant|Harper|Keller|Lindqvist|Mercer|Nakamura|Ortega|Pearce|Reyes|"
    "Sullivan|Torres|Webb|Hale|Kapoor|Murphy")
# (noun, pronoun) for plot summaries; None means either "his" or "her"
PEOPLE = (
    ("detective", None), ("nurse", None), ("teacher", None), ("farmer", None), ("boxer", None),
    ("pianist", None), ("soldier", None), ("journalist", None), ("scientist", None), ("chef", None),
    ("lawyer", None), ("pilot", None), ("widow", "her"), ("priest", "his"), ("thief", None),
    ("painter", None), ("mechanic", None), ("sheriff", None), ("astronaut", None),
    ("surgeon", None), ("student", None), ("waitress", "her"), ("writer", None),
    ("photographer", None), ("banker", None), ("fisherman", "his"), ("dancer", None),
    ("spy", None), ("park ranger", None), ("librarian", None), ("composer", None),
    ("doctor", None), ("architect", None), ("poet", None), ("hacker", None), ("miner", None),
    ("sailor", None), ("professor", None), ("gambler", None), ("bodyguard", None),
    ("musician", None), ("carpenter", None), ("orphan", None), ("prince", "his"),
    ("princess", "her"), ("actress", "her"), ("boy", "his"), ("girl", "her"),
    ("grandmother", "her"), ("grandfather", "his"), ("single mother", "her"),
    ("taxi driver", None), ("magician", None), ("cop", None), ("firefighter", None),
    ("nun", "her"), ("monk", "his"), ("bartender", None), ("truck driver", None),
    ("inventor", None), ("veterinarian", None), ("butler", "his"), ("accountant", None),
    ("hitman", "his"), ("lighthouse keeper", None), ("beekeeper", None), ("translator", None),
)
PERSON_ADJ = _t("young|old|retired|shy|former|stubborn|curious|veteran|rookie|divorced|teenage|"
                "widowed|aging|eccentric|quiet|reluctant|penniless|exiled|disgraced|small town|"
                "washed up|recently widowed|newly married|ambitious|restless|homesick|grumpy")
# Family roles and children take only ageless adjectives ("a shy girl", never "a retired girl").
AGELESS_ADJ = _t("shy|stubborn|curious|eccentric|quiet|reluctant|penniless|exiled|small town|"
                 "ambitious|restless|homesick|grumpy")
FAMILY_ROLES = frozenset(_t("widow|orphan|prince|princess|boy|girl|grandmother|grandfather|"
                            "single mother|student"))
PLACES = _t(
    "a remote island|a small town in Maine|Paris|Tokyo|a fishing village|the desert|"
    "a crumbling mansion|an abandoned mine|New York|a mountain village|the suburbs|"
    "a space station|a boarding school|Berlin|Chicago|the Alaskan wilderness|rural Ireland|"
    "a cruise ship|Mexico City|Rome|a farm in Iowa|London|a lighthouse on the coast|the jungle|"
    "Vienna|a quiet seaside town|an Arctic research base|Hong Kong|Istanbul|a Texas border town|"
    "a prison|Las Vegas|Mumbai|a sleepy village in Provence|the Scottish Highlands|Cairo|Havana|"
    "a submarine|the Moon|Mars|an old hotel|a ski resort|a traveling circus|a vineyard in Tuscany|"
    "Buenos Aires|Lagos|Seoul|Stockholm|Dublin|Montana|New Orleans|a mining town in Wales|"
    "a royal palace|a tiny apartment in Brooklyn|a hospital in Boston|a sheep farm in New Zealand")
MOVES = _t("returns to|moves to|travels to|is sent to|heads to|flees to|is posted to|"
           "relocates to|goes back to|sneaks into")
GOALS = _t(
    "solve one last case|save the family farm|win back {pro} {spouse}|clear {pro} name|"
    "pay off an old debt|protect a young witness|finish {pro} first novel|open a small restaurant|"
    "find {pro} missing brother|track down a stolen painting|escape from a small town|"
    "reunite with {pro} estranged father|rebuild {pro} life|uncover a government conspiracy|"
    "stop a bank robbery|win a national dance competition|train for one final fight|"
    "deliver a mysterious package|survive a harsh winter|search for a lost city|"
    "investigate a string of murders|look after {pro} dying mother|get {pro} old band back together|"
    "break a world record|build a rocket in {pro} garage|climb a dangerous mountain|"
    "learn the truth about {pro} past|sail around the world|keep a dark family secret|"
    "run for mayor|coach a hopeless basketball team|adopt a stray dog|rob a casino|"
    "cross the country on foot|find a cure for a rare disease|save a struggling school|"
    "prove {pro} innocence|catch a notorious smuggler|hunt down a serial killer|"
    "raise {pro} sister's three children|decode a secret message|steal a priceless diamond|"
    "expose a corrupt mayor|bring a lost letter home|teach a parrot to sing")
PERIODS = _t("in the 1950s|during the Second World War|in the near future|in Victorian England|"
             "in the 1980s|in the summer of 1969|during the Depression|in ancient Rome|"
             "in the late 1970s|in medieval France|during the gold rush|at the turn of the century")
RELATIVES = _t("wife|husband|friends|father|mother|roommate|kids|girlfriend|boyfriend|brother|"
               "sister|grandmother|partner|neighbor|cousin|oldest friend|coworkers|film club")
WHEN = _t("last night|last weekend|on a rainy Sunday|with my {rel}|on a long flight|on television|"
          "on a streaming service|at a festival|at the cinema|at a midnight screening|for a class|"
          "twice this week|years ago|as a kid|over the holidays|on a quiet afternoon|"
          "at a drive-in|after work")
SOURCES = _t("true story|novel|stage play|comic book|short story|video game|children's book|"
             "newspaper article|radio drama|memoir")
TIME_SPANS = _t("this year|in years|in a long time|in ages|this decade|in my life")

OPENERS = (  # viewing anecdotes: no sentiment, so prompts cut from them are neutral
    "I watched this {film} {when}.",
    "I saw this {film} {when}.",
    "My {rel} picked this {film} for movie night.",
    "I went into this {film} with {expect} expectations.",
    "I finally got around to watching this {film}.",
    "I had heard a lot about this {film} before seeing it.",
    "I rented this {film} on a whim.",
    "This {film} came out in {year}.",
    "It is based on a {source}.",
    "I caught this {film} {when}.",
    "We watched this {film} {when}.",
    "I knew nothing about this {film} going in.",
    "I have now seen this {film} {count} times.",
)
PLOTS = (  # one-sentence plot summaries
    "It is {a_genre} about {a_person} who {doing}.",
    "The {film} follows {a_person} who {doing}.",
    "Set {period}, it tells the story of {a_person} who {doing}.",
    "{name} plays {a_person} who {doing}.",
    "This {genre} is about {a_person} who {doing}.",
    "{a_genre_cap} about {a_person} who {doing}.",
)

# verdicts that close a review; each carries its sign in lexicon words (tests check it)
POSITIVE_VERDICTS = _t(
    "Highly recommended.|I recommend it to everyone.|Definitely worth watching.|"
    "Well worth your time.|I would happily watch it again.|A real treat.|You will love it.|"
    "I loved it.|What a joy!|Simply wonderful.|Go and see it, you will not regret it.|"
    "A must see, and an instant classic.|Bravo, a triumph.|I enjoyed every minute.")
NEGATIVE_VERDICTS = _t(
    "Avoid it.|Avoid this one.|Skip it.|Not recommended.|What a waste of time.|"
    "A complete waste of time.|Truly awful.|I regret watching it.|Two hours wasted.|"
    "A dull, lifeless mess.|Dreadful from start to finish.|What a letdown.|"
    "I was bored the whole time.")
MIXED_VERDICTS = _t(
    "It is a mixed bag.|Overall, it is decent but flawed.|Not great, not terrible.|"
    "Good in parts, dull in others.|It is watchable, but forgettable.|"
    "A flawed but interesting {film}.|Fine for a rainy afternoon, nothing more.|"
    "Worth a look, but do not expect a masterpiece.|Uneven, but not bad.|"
    "It has problems, but I still enjoyed it.|Some great moments, some dull ones.")


# -----------------------------------------------------------------------------
# small grammar helpers


def _a(phrase: str) -> str:
    """'a' or 'an' + phrase (by the first letter; good enough for our pools)."""
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def _words(s: str) -> int:
    return len(s.split())


class _Review:
    """The state of one review being written: its tense, the aspects already used, the film noun."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.past = rng.random() < 0.5  # "the acting was" vs "the acting is"
        self.film = rng.choice(FILM)
        self.aspects: list[str] = []
        self.used: set[str] = set()  # sentence forms that should not come twice

    # ---- pieces
    def be(self, noun: str) -> str:
        plural = noun in PLURAL
        return ("were" if plural else "was") if self.past else ("are" if plural else "is")

    def be_not(self, noun: str) -> str:
        base = self.be(noun)
        if self.rng.random() < 0.3:
            return base + " not"
        return base + "n't"

    def new_aspect(self) -> str:
        free = [k for k in ASPECTS if k not in self.aspects]
        key = self.rng.choice(free or list(ASPECTS))
        self.aspects.append(key)
        return key

    def noun(self, key: str) -> str:
        return self.rng.choice(ASPECTS[key].nouns)

    def adj(self, key: str, sign: int, intensify: float = 0.3) -> str:
        """An adjective of the given sign for the aspect, sometimes with "very"/"absolutely"."""
        pool = ASPECTS[key].positive if sign > 0 else ASPECTS[key].negative
        word = self.rng.choice(pool)
        return self.intensify(word, intensify)

    def intensify(self, word: str, p: float) -> str:
        if self.rng.random() >= p:
            return word
        pool = EXTREME_INTENSIFIERS if word in EXTREME else INTENSIFIERS
        return self.rng.choice(pool) + " " + word

    def name(self) -> str:
        return self.rng.choice(FIRST_NAMES) + " " + self.rng.choice(LAST_NAMES)

    # ---- sentences
    def aspect_sentence(self, sign: int) -> str:
        """One sentence praising (sign=+1) or panning (sign=-1) a fresh aspect."""
        rng, key = self.rng, self.new_aspect()
        n = self.noun(key)
        form = rng.random()
        if key == "acting" and form < 0.3:
            gives = "gave" if self.past else "gives"
            role = rng.choice(PEOPLE)[0]
            if rng.random() < 0.5:
                return f"{self.name()} {gives} {_a(self.adj(key, sign))} performance as the {role}."
            return f"{self.name()} {self.be('x')} {self.adj(key, sign)} as the {role}."
        if key in ("direction", "music") and form < 0.2:
            thing = "direction" if key == "direction" else "score"
            return f"{self.name()}'s {thing} {self.be(thing)} {self.adj(key, sign)}."
        if form < 0.45:
            return f"The {n} {self.be(n)} {self.adj(key, sign)}."
        if form < 0.6:
            a1, a2 = rng.sample(ASPECTS[key].positive if sign > 0 else ASPECTS[key].negative, 2)
            return f"The {n} {self.be(n)} {self.intensify(a1, 0.3)} and {a2}."
        if form < 0.72:
            if sign > 0:
                verb = rng.choice(("I loved", "I really enjoyed", "I adored", "I enjoyed",
                                   "I was impressed by"))
            else:
                verb = rng.choice(("I hated", "I was disappointed by", "I was bored by",
                                   "I was annoyed by"))
            return f"{verb} the {n}."
        if form < 0.88:  # negation: "the pacing is never dull", "the jokes weren't funny"
            if sign > 0:
                neg = rng.choice(ASPECTS[key].negative)
                if rng.random() < 0.5:
                    return f"The {n} {self.be(n)} never {neg}."
                return f"The {n} {self.be_not(n)} {neg} at all."
            pos = rng.choice(ASPECTS[key].positive)
            if rng.random() < 0.3:
                was_not = rng.choice(("was not", "was never", "wasn't"))
                return f"I {was_not} impressed by the {n}."
            very = rng.choice(("", "", "very ", "particularly ", "remotely "))
            return f"The {n} {self.be_not(n)} {very}{pos}."
        # exclamation: "What gorgeous visuals!", "The ending was truly perfect!"
        adj = self.adj(key, sign, intensify=0.0)
        if n in PLURAL:
            return f"What {adj} {n}!"
        return f"The {n} {self.be(n)} {self.intensify(adj, 0.6)}!"

    def overall_sentence(self, sign: int) -> str:
        """A verdict on the whole film."""
        rng, film = self.rng, self.film
        form = rng.random()
        if form < 0.15 and "one of the best" in self.used:
            form = 0.15 + 0.85 * rng.random()  # say "one of the best/worst" once per review
        if form < 0.15:
            self.used.add("one of the best")
            best = "best" if sign > 0 else "worst"
            return f"This is one of the {best} {film}s I have seen {rng.choice(TIME_SPANS)}."
        adjs = POSITIVE_OVERALL if sign > 0 else NEGATIVE_OVERALL
        if form < 0.4:  # "a truly awful film", "a very moving film" (never "a so moving film")
            adj = rng.choice(adjs)
            if rng.random() < 0.35:
                pool = EXTREME_INTENSIFIERS if adj in EXTREME else ATTRIBUTIVE_INTENSIFIERS
                adj = rng.choice(pool) + " " + adj
            return f"It {self.be('x')} {_a(adj)} {film}."
        if form < 0.5:
            return f"What {_a(rng.choice(adjs))} {film}!"
        if form < 0.7:
            nouns = POSITIVE_NOUNS if sign > 0 else NEGATIVE_NOUNS
            return f"This {film} {self.be('x')} {_a(rng.choice(nouns))}."
        if sign > 0:
            return rng.choice((
                "I loved every minute of it.", "I enjoyed it from start to finish.",
                "I was hooked from the first scene.", f"It is a beautiful, moving {film}.",
                f"The whole {film} {self.be('x')} {rng.choice(adjs)}.",
                "Not bad at all, actually.", "There is never a dull moment.",
                f"It {self.be('x')} not a bad {film} at all.",
            ))
        return rng.choice((
            "I hated every minute of it.", "I was bored from the first scene.",
            "I nearly fell asleep halfway through.",
            f"I wanted to like it, but it {self.be('x')} just {rng.choice(adjs)}.",
            f"The whole {film} {self.be('x')} {rng.choice(adjs)}.",
            "It is not good at all.", f"It {self.be('x')}n't a good {film}.",
        ))

    def contrast_sentence(self, first: int, second: int, concession: bool = False) -> str:
        """Two aspects of opposite sign in one sentence; the clause after the contrast wins.

        concession=True (a one-sided review conceding a point): the conceded adjective is never
        stronger than the main one, and is often softened ("a little slow, but ...").
        """
        rng = self.rng
        k1, k2 = self.new_aspect(), self.new_aspect()
        n1, n2 = self.noun(k1), self.noun(k2)
        adj2 = self.adj(k2, second)
        adj1 = self.adj(k1, first, intensify=0.0)
        if concession:
            main = abs(lexicon.polarity(adj2.split()[-1]))
            pool = ASPECTS[k1].positive if first > 0 else ASPECTS[k1].negative
            weaker = [a for a in pool if abs(lexicon.polarity(a)) <= main]
            if not weaker:  # e.g. every effects adjective is strong: take the mildest ones
                mildest = min(abs(lexicon.polarity(a)) for a in pool)
                weaker = [a for a in pool if abs(lexicon.polarity(a)) == mildest]
            adj1 = rng.choice(weaker)
            if rng.random() < 0.5 and adj1 not in EXTREME:
                adj1 = rng.choice(DIMINISHERS if first < 0 else ("fairly", "somewhat")) + " " + adj1
        form = rng.random()
        if form < 0.5:
            return f"The {n1} {self.be(n1)} {adj1}, but the {n2} {self.be(n2)} {adj2}."
        if form < 0.8:
            conj = rng.choice(("Although", "Though", "While"))
            return f"{conj} the {n1} {self.be(n1)} {adj1}, the {n2} {self.be(n2)} {adj2}."
        if second > 0:
            verb = rng.choice(("loved", "enjoyed"))
            return f"The {n1} {self.be(n1)} {adj1}, but I still {verb} the {n2}."
        return f"The {n1} {self.be(n1)} {adj1}, yet the {n2} {self.be(n2)} {adj2}."

    def neutral_sentence(self) -> str:
        """A viewing anecdote or a plot summary: context without sentiment."""
        rng = self.rng
        if rng.random() < 0.5:
            template = rng.choice(OPENERS)
        else:
            template = rng.choice(PLOTS)
        person, pro = rng.choice(PEOPLE)
        pro = pro or rng.choice(("his", "her"))
        spouse = "wife" if pro == "his" else "husband"
        adjectives = AGELESS_ADJ if person in FAMILY_ROLES else PERSON_ADJ
        a_person = _a(rng.choice(adjectives) + " " + person) if rng.random() < 0.7 else _a(person)
        if rng.random() < 0.5:
            doing = rng.choice(MOVES) + " " + rng.choice(PLACES) + " to " + rng.choice(GOALS)
        else:
            doing = rng.choice(("must", "tries to", "sets out to", "is hired to", "agrees to",
                                "decides to")) + " " + rng.choice(GOALS)
        genre = rng.choice(GENRES)
        text = template.format(
            film=self.film, when=rng.choice(WHEN), rel=rng.choice(RELATIVES),
            expect=rng.choice(("low", "high", "no real", "modest")), year=rng.randint(1950, 2023),
            source=rng.choice(SOURCES), count=rng.choice(("two", "three", "four", "several")),
            a_genre=_a(genre), genre=genre, a_genre_cap=_cap(_a(genre)), a_person=a_person,
            doing=doing, period=rng.choice(PERIODS), name=self.name())
        # second pass: the {rel}/{pro} slots that came in with WHEN and GOALS
        return text.format(rel=rng.choice(RELATIVES), pro=pro, spouse=spouse)

    def verdict(self, sentiment: str) -> str:
        pool = {"positive": POSITIVE_VERDICTS, "negative": NEGATIVE_VERDICTS,
                "mixed": MIXED_VERDICTS}[sentiment]
        return self.rng.choice(pool).format(film=self.film)


# -----------------------------------------------------------------------------
# reviews


def _body(r: _Review, sentiment: str, first: bool) -> str:
    """One body sentence of a review with the given overall sentiment."""
    rng = r.rng
    if sentiment == "mixed":
        if first:  # every mixed review has at least one explicit contrast
            return r.contrast_sentence(*rng.choice(((1, -1), (-1, 1))))
        return r.aspect_sentence(rng.choice((1, -1)))
    sign = 1 if sentiment == "positive" else -1
    u = rng.random()
    if u < 0.62:
        return r.aspect_sentence(sign)
    if u < 0.85:
        return r.overall_sentence(sign)
    return r.contrast_sentence(-sign, sign, concession=True)  # a concession, then the review's sign


def generate_review(rng: random.Random, sentiment: str) -> dict:
    """One review dict {"text", "sentiment", "aspects"} drawn with the caller's RNG."""
    r = _Review(rng)
    n_sentences = rng.choices((1, 2, 3, 4, 5), weights=(10, 22, 30, 23, 15))[0]
    opener = n_sentences >= 2 and rng.random() < 0.55
    closer = n_sentences >= 3 and rng.random() < 0.5
    n_body = n_sentences - opener - closer
    # (kind, text, aspects): the kind says what may be dropped to respect MAX_WORDS
    sentences: list[tuple[str, str, list[str]]] = []

    def add(kind: str, make) -> None:
        taken = [a for _, _, aspects in sentences for a in aspects]
        for _ in range(5):  # a review does not open two sentences alike ("I was bored by ...")
            r.aspects[:] = taken  # a redrawn sentence gives its aspects back
            text = make()
            if all(text.split()[:3] != t.split()[:3] for _, t, _ in sentences):
                break
        sentences.append((kind, text, r.aspects[len(taken):]))

    if opener:
        add("context", r.neutral_sentence)
    for i in range(n_body):
        add("first" if i == 0 else "body", lambda: _body(r, sentiment, first=(i == 0)))
    if closer:
        add("verdict", lambda: r.verdict(sentiment))

    def n_words():
        return sum(_words(t) for _, t, _ in sentences)

    # Too long: drop the context first, then later body sentences, then the verdict; never the
    # first body sentence, which carries a mixed review's contrast.
    for kind in ("context", "body", "verdict"):
        while n_words() > MAX_WORDS and any(k == kind for k, _, _ in sentences):
            sentences.pop(max(i for i, (k, _, _) in enumerate(sentences) if k == kind))
    while n_words() < MIN_WORDS:  # "What ugly visuals!" alone is too short
        sentences.append(("verdict", r.verdict(sentiment), []))
    text = " ".join(_cap(t) for _, t, _ in sentences)
    # the aspects of the sentences kept, in order of first mention
    aspects = list(dict.fromkeys(a for _, _, sentence_aspects in sentences for a in sentence_aspects))
    return {"text": text, "sentiment": sentiment, "aspects": aspects}


def generate_reviews(n: int, seed: int) -> list[dict]:
    """n reviews, ~40% positive, 40% negative, 20% mixed; the same seed gives the same list."""
    rng = random.Random(seed)
    labels, weights = zip(*SENTIMENT_MIX.items())
    out = []
    for _ in range(n):
        sentiment = rng.choices(labels, weights=weights)[0]
        review = generate_review(rng, sentiment)
        while _words(review["text"]) > MAX_WORDS:  # rare: one very long sentence; draw again
            review = generate_review(rng, sentiment)
        out.append(review)
    return out


def review_prompts(texts: list[str], seed: int, min_words: int = 2, max_words: int = 5) -> list[str]:
    """The first 2-5 words of each text, as TRL's sentiment notebook cut IMDB reviews into prompts.

    One prompt per text, in order. A prompt always leaves at least one word of its review for the
    policy to write.
    """
    if not 1 <= min_words <= max_words:
        raise LabError(f"review_prompts needs 1 <= min_words <= max_words, got {min_words}, {max_words}.")
    rng = random.Random(seed)
    prompts = []
    for text in texts:
        words = text.split()
        k = rng.randint(min_words, max_words)  # drawn for every text so the stream stays aligned
        k = max(1, min(k, len(words) - 1))
        prompts.append(" ".join(words[:k]))
    return prompts


def derive_seed(seed: int, name: str) -> int:
    """A stable seed for one split ("validation", "prompts/train"), so splits do not share a stream."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


# -----------------------------------------------------------------------------
# JSON Lines


def write_jsonl(records, path: str | Path) -> Path:
    """One JSON object per line, UTF-8, "\\n" endings, keys in insertion order: byte-stable output."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[dict]:
    """All records of a JSON Lines file; a bad line raises LabError naming the file and line."""
    path = Path(path)
    if not path.exists():
        raise LabError(f"{path}: file not found. Make the tiny world's data with "
                       "`python -m rlhf_lab.corpus --seed 0 --out data`.")
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabError(f"{path}:{lineno}: not valid JSON ({e.msg}, column {e.colno}); "
                               "each line must hold one JSON object.") from None
            if not isinstance(record, dict):
                raise LabError(f"{path}:{lineno}: expected a JSON object, got "
                               f"{type(record).__name__}.")
            records.append(record)
    return records


# -----------------------------------------------------------------------------
# command line


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the training split")
    parser.add_argument("--out", type=Path, default=Path("data"), help="folder to write into")
    parser.add_argument("--n-train", type=int, default=20_000, help="training reviews")
    parser.add_argument("--n-validation", type=int, default=1_000, help="validation reviews")
    parser.add_argument("--n-prompts-train", type=int, default=2_000, help="PPO training prompts")
    parser.add_argument("--n-prompts-validation", type=int, default=256, help="evaluation prompts")
    args = parser.parse_args(argv)

    # The validation split uses its own derived seed. Its texts are not checked against the
    # training split: short template reviews can repeat by chance (seed 0: 13 of 1,000 do).
    train = generate_reviews(args.n_train, args.seed)
    validation = generate_reviews(args.n_validation, derive_seed(args.seed, "validation"))
    splits = {"train": (train, args.n_prompts_train), "validation": (validation, args.n_prompts_validation)}
    for split, (reviews, n_prompts) in splits.items():
        write_jsonl(reviews, args.out / "reviews" / f"{split}.jsonl")
        texts = [r["text"] for r in reviews[:n_prompts]]
        prompts = review_prompts(texts, derive_seed(args.seed, f"prompts/{split}"))
        write_jsonl(({"prompt": p} for p in prompts), args.out / "prompts" / f"{split}.jsonl")
        print(f"{split}: {len(reviews)} reviews, {len(prompts)} prompts -> {args.out}")


if __name__ == "__main__":
    main()
