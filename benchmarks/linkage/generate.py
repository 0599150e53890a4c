"""A labelled set of patient identities for the patient index: a city's people as several
institutions registered them, with the truth of who is whom.

    .venv/bin/python benchmarks/linkage/generate.py --identities 12000 --seed 1 --out /tmp/linkage.csv

The population (README.md "Noise model" says why each rate is what it is):

* households in Iasi county: a couple with one family name, children (some twins), an elder
  sometimes, at one address; people living alone; a son named after his father at the
  same address; namesakes (same family and given names, sex and birth date, elsewhere);
* common Romanian family names (a Zipf-like head of real names, a long tail of made names)
  and given names, double given names (ANA MARIA, IOAN ALEXANDRU);
* every person has a valid CNP (sex and century digit agree with the birth date, county of
  birth, sequence number, check digit), twins consecutive ones;
* 1-4 identities per person, at distinct institutions, each institution with its own habits
  (upper case, diacritics with comma or cedilla or none, a sender that swaps the PN
  components or sends no `^`, whether it sends the CNP, the address, the birth date);
* record noise: typos (substitution, deletion, insertion, transposition, Romanian phonetic
  slips), a double given name cut to its first word or its words swapped, a diminutive,
  a married name (another family name, or NEW-OLD / OLD-NEW hyphenated) on later identities,
  a move, birth date missing, day and month swapped, one wrong digit, two digits transposed,
  sex missing or wrong, address missing, abbreviated, without diacritics or postcode, a CNP
  with a wrong digit or cut short.

Columns: truth_person, issuer_kind, issuer, patient_id, patient_name, birth_date, sex, address,
national_id, and `noise` (what was done to the record, for diagnosis; the evaluation never
reads it).
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

# ----- names --------------------------------------------------------------------------

#: the most frequent Romanian family names, roughly in order (national and Moldavian lists)
FAMILY_HEAD = """
Popa Popescu Pop Radu Dumitru Stan Stoica Gheorghe Matei Ciobanu Ionescu Rusu Munteanu Constantin
Mihai Moldovan Marin Lungu Dinu Tudor Florea Ilie Ion Cojocaru Barbu Ursu Nistor Toma Vasile
Sandu Cristea Dobre Oprea Tănase Georgescu Anghel Sârbu Stanciu Mocanu Neagu Bălan Enache Lazăr
Preda Stănescu Constantinescu Niculescu Diaconu Suciu Voicu Ardeleanu Petrescu Iordache Zamfir
Vlad Cazacu Ștefan Chiriac Apostol Olaru Moraru Andrei Manole Grigoraș Țurcanu Bîrsan Cernat
Ungureanu Buzatu Mihăilă Popovici Nechifor Ababei Pricop Cozma Rotaru Onofrei Sava Boboc
Amariei Aanei Iftimie Ciubotaru Agavriloaei Ștefănescu Șerban Țăranu Tăbăcaru Hrițcu Huțanu
Bejan Afloarei Acatrinei Lupu Avram Ispas Husar Moisa Filip Mazilu Pavel Talpă Bucur Ciocan
Dascălu Murariu Timofte Vieru Ene Iacob Gavrilă Roman Istrate Năstase Paraschiv Ivan Bordeianu
Cucu Asandei Pintilie Țâmpău Crăciun Lupașcu Jitaru Mitrea Onu Irimia Costache Axinte Pătrașcu
""".split()

_ROOTS = """
Bogd Chir Cost Dobr Frunz Gavril Hârț Ilies Luc Mihal Neagr Petr Rad Stroi Tom Văc Zah Arhip
Bran Cior Doroft Fărt Gorc Hutu Irim Leon Mard Năst Oniciu Pal Răc Scut Tim Ursach Vârl Buhăi
Câmp Dorn Fil Gheorgh Iancu Lăz Mân Nic Olt Porum Rusn Săl Tăn Ungh Vrânc Zmeu Borș Ciuc
Dăsc Fior Grig Hârl Iov Lup Măr Nist Obr Pâr Roșc Sim Tod Varv Zăr Aldea Bălt Cioc Drag Fân
""".split()
_SUFFIXES = ["escu", "eanu", "aru", "ache", "uc", "iuc", "ovici", "ău", "oiu", "ea", "aș", "an", "ariu", "oaie", "ilă"]

FEMALE = """
Maria Elena Ioana Ana Andreea Mihaela Cristina Daniela Alexandra Gabriela Georgiana Florentina
Nicoleta Roxana Alina Ramona Adriana Simona Monica Mariana Gheorghița Vasilica Ștefania Irina
Raluca Larisa Bianca Diana Oana Ionela Luminița Rodica Viorica Doina Aurelia Paraschiva Natalia
Teodora Sofia Antonia Iuliana Lăcrămioara Mădălina Cătălina Anișoara Tatiana Camelia Corina
Denisa Florina Petronela Valentina Silvia Carmen Angela Emilia Otilia Veronica Cornelia Lucia
""".split()
MALE = """
Ion Gheorghe Vasile Constantin Alexandru Andrei Mihai Nicolae Ioan Ștefan Florin Daniel Marian
Cristian Adrian Gabriel Dumitru Dan Petru Ionuț Bogdan Răzvan Cătălin Costel Mircea Sorin
Lucian Marius Vlad Tudor David Matei Luca Eduard Ovidiu Iulian Radu Viorel Valentin Cosmin
Sebastian Robert Silviu Aurel Emil Traian Victor Neculai Costică Gigel Petrică Paul Liviu
Ciprian Dorin Emanuel Laurențiu Sergiu Octavian Teodor Rareș Darius Eusebiu
""".split()
#: usual second given names (ANA MARIA, IOAN ALEXANDRU)
FEMALE_SECOND = "Maria Elena Cristina Ioana Alexandra Gabriela Daniela Mădălina Andreea Georgiana Raluca".split()
MALE_SECOND = "Alexandru Andrei Ionuț Mihai Cristian Daniel Gabriel Cătălin Ștefan Florin Marian Vasile".split()
#: what a clerk may write instead of the name (only the frequent pairs)
DIMINUTIVES = {
    "Ion": ["Ionel", "Ionică"], "Gheorghe": ["Gigel", "Ghiță"], "Constantin": ["Costel", "Costică"],
    "Vasile": ["Vasilică"], "Nicolae": ["Nicu", "Nicușor"], "Alexandru": ["Alex"], "Dumitru": ["Mitică"],
    "Maria": ["Mărioara", "Măriuca"], "Elena": ["Lenuța"], "Ana": ["Anișoara"], "Gabriela": ["Gabi"],
    "Petru": ["Petrică"], "Ioan": ["Ionel"], "Mihai": ["Mihăiță"], "Ștefan": ["Fănel"],
}  # fmt: skip
#: twins' names: near pairs of a boy and a girl, and same-sex pairs
TWIN_NAMES = [
    ("Cristian", "Cristina"), ("Andrei", "Andreea"), ("Ionuț", "Ionela"), ("Daniel", "Daniela"),
    ("Gabriel", "Gabriela"), ("Mihai", "Mihaela"), ("Florin", "Florina"), ("Alexandru", "Alexandra"),
    ("Ștefan", "Ștefania"), ("Petru", "Petronela"), ("Valentin", "Valentina"), ("Emil", "Emilia"),
]  # fmt: skip

# ----- places ---------------------------------------------------------------------------

#: (type, street, postcode) in Iasi
STREETS = [
    ("Str.", "Lăpușneanu", "700057"), ("Bd.", "Ștefan cel Mare și Sfânt", "700064"), ("Bd.", "Copou", "700506"),
    ("Bd.", "Independenței", "700101"), ("Șos.", "Păcurari", "700511"), ("Șos.", "Nicolina", "700713"),
    ("Str.", "Alexandru cel Bun", "700054"), ("Str.", "Primăverii", "700263"), ("Bd.", "Dacia", "700332"),
    ("Bd.", "Tudor Vladimirescu", "700305"), ("Str.", "Canta", "700529"), ("Str.", "Mircea cel Bătrân", "700661"),
    ("Str.", "Vasile Lupu", "700309"), ("Str.", "Cuza Vodă", "700036"), ("Str.", "Sărăriei", "700451"),
    ("Str.", "Arcu", "700135"), ("Str.", "Anastasie Panu", "700020"), ("Str.", "Ciurchi", "700359"),
    ("Str.", "Mihai Eminescu", "700093"), ("Bd.", "Nicolae Iorga", "700582"), ("Str.", "Gării", "700038"),
    ("Str.", "Octav Băncilă", "700010"), ("Bd.", "Socola", "700190"), ("Șos.", "Bucium", "700265"),
    ("Str.", "Aurel Vlaicu", "700439"), ("Str.", "Cantemir", "700233"), ("Str.", "Palat", "700032"),
    ("Calea", "Chișinăului", "700180"), ("Aleea", "Grigore Ghica Vodă", "700469"), ("Str.", "Pantelimon Halipa", "700614"),  # noqa: E501
    ("Str.", "Sfântul Lazăr", "700045"), ("Str.", "Elena Doamna", "700398"), ("Str.", "Ion Creangă", "700317"),
    ("Str.", "14 Decembrie 1989", "700124"), ("Aleea", "Sucidava", "700735"), ("Str.", "Fabricii", "700390"),
    ("Bd.", "Chimiei", "700291"), ("Str.", "Tătărași", "700308"), ("Str.", "Vasile Conta", "700106"),
    ("Str.", "Bistrița", "700489"), ("Str.", "Păcurari", "700544"), ("Aleea", "Mihail Sadoveanu", "700489"),
]  # fmt: skip
#: towns and villages around (locality, postcode, is a village)
LOCALITIES = [
    ("Pașcani", "705200", False), ("Târgu Frumos", "705300", False), ("Hârlău", "705100", False),
    ("Podu Iloaiei", "707365", False), ("Miroslava", "707305", True), ("Tomești", "707515", True),
    ("Valea Lupului", "707410", True), ("Holboca", "707255", True), ("Bârnova", "707035", True),
    ("Rediu", "707390", True), ("Ciurea", "707115", True), ("Lețcani", "707280", True),
]  # fmt: skip
#: more of the city's streets: named after people and things, with their own postcodes
_STREET_PEOPLE = (
    """
Mihail Kogălniceanu|Vasile Alecsandri|Costache Negruzzi|Ion Neculce|Grigore Ureche|Miron Costin|Dimitrie Cantemir
Petru Rareș|Bogdan Vodă|Dragoș Vodă|Ștefan Luchian|Nicolae Bălcescu|Avram Iancu|Mihail Sadoveanu|George Coșbuc
Garabet Ibrăileanu|Titu Maiorescu|Gheorghe Asachi|Anastasie Fătu|Ion Ionescu de la Brad|Alexandru Lăpușneanu
Sf. Andrei|Sf. Sava|Sf. Teodor|Sf. Gheorghe|Vasile Pârvan|Emil Racoviță|Constantin Negri|Gavriil Musicescu
Ciprian Porumbescu|Eugen Ionescu|Tudor Arghezi|Lucian Blaga|Liviu Rebreanu|Octavian Goga|Ion Luca Caragiale
Nicolae Gane|Veronica Micle|Elena Cuza|Doamna Stanca|Aurel Vlaicu|Henri Coandă|Traian Vuia|Gheorghe Doja
""".replace("\n", "|")
    .strip("|")
    .split("|")
)
_STREET_THINGS = """
Teilor Plopilor Salcâmilor Castanilor Florilor Livezii Morii Viilor Pădurii Izvorului Fântânilor Crinului
Trandafirilor Liliacului Zorilor Luncii Păcii Unirii Libertății Muncii Sportului Școlii Ogorului Cerbului
Vânătorilor Pescarilor Morarilor Zidarilor Olarilor Tăbăcarilor Cișmelei Grădinilor Ghioceilor Brazilor Stejarului
Bradului Frasinului Ulmului Nucului Cireșilor Merilor Prunilor Caișilor Arinilor Răchitei Sălciilor Ciocârliei
""".split()


def _more_streets() -> list[tuple[str, str, str]]:
    rng = random.Random(20_261_207)  # the same city whatever the seed of the people
    taken = {p for _, _, p in STREETS}
    out = []
    for name in [n.strip() for n in _STREET_PEOPLE if n.strip()] + _STREET_THINGS:
        for kind in rng.sample(["Str.", "Str.", "Str.", "Aleea", "Bd.", "Intr."], rng.choice([1, 1, 2])):
            while (postcode := f"700{rng.randrange(1000):03d}") in taken:
                pass
            taken.add(postcode)
            out.append((kind, name, postcode))
    return out


STREETS += _more_streets()
VILLAGE_STREETS = ["Principală", "Școlii", "Bisericii", "Morii", "Livezii", "Florilor", "Unirii", "Viilor"]
#: counties of birth: mostly Iasi (22), then the neighbours, then anywhere
COUNTIES = ["22"] * 14 + ["07", "33", "37", "39", "04", "27", "38"] + [f"{n:02d}" for n in range(1, 47)] + ["40", "41"]


@dataclass(frozen=True)
class Home:
    street_type: str
    street: str
    number: str
    block: str  # bl. / sc. / ap. or empty (a house)
    locality: str
    postcode: str
    village: bool


@dataclass
class Person:
    pid: int
    sex: str
    born: date
    family: str
    given: tuple[str, ...]
    home: Home
    cnp: str
    tags: list[str] = field(default_factory=list)
    #: an earlier family name (a married woman's maiden name): shown by her earlier identities
    maiden: str = ""


@dataclass(frozen=True)
class Issuer:
    kind: str  # dicom (IssuerOfPatientID) or org (the sending organization)
    name: str
    share: float  # how much of the city it sees
    upper: float  # chance a record is upper case
    diacritics: tuple[float, float, float]  # comma, cedilla, none
    swapped: float  # Given^Family
    unsplit: float  # no ^
    cnp: float  # sends the CNP
    address: float  # sends an address
    formal: float  # of those, the formal Romanian form (Str. X nr. 12, bl. ..., Iași 700057)
    birth_missing: float
    sex_missing: float
    id_style: str


ISSUERS = [
    Issuer("dicom", "1.2.40.0.13.1.1", 0.30, 0.9, (0.55, 0.15, 0.30), 0.003, 0.003, 0.75, 0.85, 0.8, 0.01, 0.01, "H{:07d}"),  # noqa: E501
    Issuer("dicom", "1.2.40.0.13.1.2", 0.20, 0.95, (0.20, 0.50, 0.30), 0.003, 0.01, 0.60, 0.80, 0.6, 0.02, 0.01, "{:08d}"),  # noqa: E501
    Issuer("org", "CLINIC-A", 0.15, 0.4, (0.70, 0.05, 0.25), 0.005, 0.01, 0.45, 0.65, 0.5, 0.03, 0.02, "CA-{:06d}"),
    Issuer("org", "CLINIC-B", 0.12, 0.6, (0.30, 0.10, 0.60), 0.08, 0.02, 0.30, 0.55, 0.3, 0.04, 0.03, "B{:06d}"),
    Issuer("dicom", "IMAGISTICA-D", 0.13, 1.0, (0.00, 0.00, 1.00), 0.01, 0.25, 0.35, 0.50, 0.2, 0.06, 0.05, "D{:05d}"),
    Issuer("org", "LAB-C", 0.10, 1.0, (0.10, 0.10, 0.80), 0.01, 0.05, 0.20, 0.30, 0.4, 0.10, 0.08, "L-{:06d}"),
]  # fmt: skip


class Population:
    """People in households, drawn with one seeded random source."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.people: list[Person] = []
        self.sequences: dict[tuple[str, str], int] = {}
        head_weights = [1 / (i + 4) ** 0.9 for i in range(len(FAMILY_HEAD))]
        tail = sorted({r + s for r in _ROOTS for s in _SUFFIXES})
        # the head holds about 45% of people, the tail the rest (a city's many rarer names)
        scale = 0.45 / sum(head_weights)
        self.family_names = FAMILY_HEAD + tail
        self.family_weights = [w * scale for w in head_weights] + [0.55 / len(tail)] * len(tail)
        self.female_weights = [1 / (i + 3) ** 0.8 for i in range(len(FEMALE))]
        self.male_weights = [1 / (i + 3) ** 0.8 for i in range(len(MALE))]

    # ----- draws
    def family(self) -> str:
        return self.rng.choices(self.family_names, self.family_weights)[0]

    def given(self, sex: str, *, avoid: tuple[str, ...] = ()) -> tuple[str, ...]:
        names, weights = (FEMALE, self.female_weights) if sex == "F" else (MALE, self.male_weights)
        while True:
            first = self.rng.choices(names, weights)[0]
            if first in avoid:
                continue
            if self.rng.random() < 0.28:  # a double given name
                second = self.rng.choice(FEMALE_SECOND if sex == "F" else MALE_SECOND)
                if second != first and second not in avoid:
                    return (first, second)
            return (first,)

    def birth(self, lo: int, hi: int) -> date:
        """A birth date of someone aged lo..hi today (2026)."""
        start, end = date(2026 - hi, 1, 1), date(2026 - lo, 12, 31)
        return start + timedelta(days=self.rng.randrange((end - start).days))

    def home(self) -> Home:
        rng = self.rng
        if rng.random() < 0.72:
            kind, street, postcode = rng.choice(STREETS)
            flat = rng.random() < 0.65
            block = ""
            if flat:
                block = f"bl. {rng.choice('ABCDEFGHKLMPTUVZ')}{rng.randint(1, 30)}"
                if rng.random() < 0.6:
                    block += f", sc. {rng.choice('ABCD')}"
                block += f", ap. {rng.randint(1, 60)}"
            return Home(kind, street, str(rng.randint(1, 140)), block, "Iași", postcode, False)
        locality, postcode, village = rng.choice(LOCALITIES)
        if village:
            return Home("Str.", rng.choice(VILLAGE_STREETS), str(rng.randint(1, 400)), "", locality, postcode, True)
        kind, street, _ = rng.choice(STREETS[:20])
        return Home(kind, street, str(rng.randint(1, 90)), "", locality, postcode, False)

    def cnp(self, sex: str, born: date, county: str | None = None) -> str:
        century = {18: ("3", "4"), 19: ("1", "2"), 20: ("5", "6")}[born.year // 100]
        first = century[0] if sex == "M" else century[1]
        county = county or self.rng.choice(COUNTIES)
        key = (county, born.strftime("%y%m%d"))
        seq = self.sequences.get(key, self.rng.randint(1, 600)) + 1
        self.sequences[key] = seq
        first12 = f"{first}{born:%y%m%d}{county}{seq:03d}"
        return first12 + check_digit(first12)

    def add(self, sex: str, born: date, family: str, given: tuple[str, ...], home: Home, *tags: str,
            county: str | None = None) -> Person:  # fmt: skip
        person = Person(len(self.people) + 1, sex, born, family, given, home, self.cnp(sex, born, county), list(tags))
        self.people.append(person)
        return person

    # ----- households
    def household(self) -> None:
        rng = self.rng
        home, family = self.home(), self.family()
        r = rng.random()
        if r < 0.30:  # alone
            sex = rng.choice("MF")
            self.add(sex, self.birth(18, 95), family, self.given(sex), home)
            return
        if r < 0.40:  # an elder, alone: a widow more often
            sex = "F" if rng.random() < 0.65 else "M"
            self.add(sex, self.birth(70, 98), family, self.given(sex), home)
            return
        # a couple, often with children; a son may bear his father's name
        he = self.add("M", self.birth(25, 85), family, self.given("M"), home)
        she_born = he.born + timedelta(days=rng.randint(-3 * 365, 8 * 365))
        she = self.add("F", min(she_born, date(2004, 1, 1)), family, self.given("F"), home)
        she.maiden = self.family()
        age = 2026 - she.born.year
        if age < 24 or rng.random() < 0.25:
            return
        children = rng.choices([1, 2, 3], [0.45, 0.4, 0.15])[0]
        for _ in range(children):
            born = she.born + timedelta(days=rng.randint(20 * 365, 38 * 365))
            if born > date(2025, 12, 1):
                continue
            if rng.random() < 0.025:  # twins (about 1.5% of births)
                self.twins(born, family, home)
                continue
            sex = rng.choice("MF")
            if sex == "M" and rng.random() < 0.06:  # named after his father
                self.add("M", born, family, he.given, home, "junior")
                he.tags.append("senior")
                continue
            self.add(sex, born, family, self.given(sex), home)

    def twins(self, born: date, family: str, home: Home) -> None:
        rng = self.rng
        county = rng.choice(COUNTIES)
        r = rng.random()
        if r < 0.35:  # near names of a boy and a girl, or of two of one sex
            boy, girl = rng.choice(TWIN_NAMES)
            pairs = [("M", (boy,)), ("F", (girl,))]
        elif r < 0.45:  # double given names that share one (ANA MARIA and ANA ELENA)
            sex = rng.choice("MF")
            first = rng.choice(FEMALE[:8] if sex == "F" else MALE[:8])
            seconds = rng.sample(FEMALE_SECOND if sex == "F" else MALE_SECOND, 2)
            pairs = [(sex, (first, s)) for s in seconds if s != first][:2]
            if len(pairs) < 2:
                pairs = [(sex, (first,)), (sex, (first, seconds[1]))]
        else:
            sex_a, sex_b = rng.choice("MF"), rng.choice("MF")
            a = self.given(sex_a)
            pairs = [(sex_a, a), (sex_b, self.given(sex_b, avoid=a))]
        twins = [self.add(sex, born, family, given, home, "twin", county=county) for sex, given in pairs]
        twins[0].tags.append(f"twin-of-{twins[1].pid}")

    def namesake(self, of: Person) -> None:
        """Someone else with the same name, sex and birth date, elsewhere in the county."""
        self.add(of.sex, of.born, of.family, of.given, self.home(), "namesake")
        of.tags.append("has-namesake")


def check_digit(first12: str) -> str:
    remainder = sum(int(d) * w for d, w in zip(first12, (2, 7, 9, 1, 4, 6, 3, 5, 8, 2, 7, 9), strict=True)) % 11
    return "1" if remainder == 10 else str(remainder)


# ----- one institution's record of a person ------------------------------------------------

_COMMA = str.maketrans("şţŞŢ", "șțȘȚ")
_CEDILLA = str.maketrans("șțȘȚ", "şţŞŢ")
_ASCII = str.maketrans("ăâîșțşţĂÂÎȘȚŞŢ", "aaistst" + "AAISTST")
#: Romanian slips of the ear and the keyboard
_PHONETIC = [("ea", "ia"), ("ia", "ea"), ("i", "y"), ("u", "o"), ("ă", "a"), ("â", "î"), ("î", "â"), ("ci", "ce"),
             ("sc", "s"), ("ie", "e"), ("ll", "l"), ("nn", "n"), ("ț", "t"), ("h", ""), ("ch", "c")]  # fmt: skip
_LETTERS = "abcdefghijlmnoprstuvz"


class Recorder:
    """What an institution types: the person's record with its habits and its mistakes."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.counters: dict[str, int] = {}

    def typo(self, word: str) -> str:
        rng = self.rng
        lower = word.lower()
        for _ in range(10):
            r = rng.random()
            i = rng.randrange(1, len(lower)) if len(lower) > 1 else 0  # first letters are typed right more often
            if rng.random() < 0.15:
                i = 0
            if r < 0.30:
                out = lower[:i] + rng.choice(_LETTERS) + lower[i + 1 :]
            elif r < 0.50:
                out = lower[:i] + lower[i + 1 :]
            elif r < 0.65:
                out = lower[:i] + rng.choice(_LETTERS) + lower[i:]
            elif r < 0.80 and i + 1 < len(lower):
                out = lower[:i] + lower[i + 1] + lower[i] + lower[i + 2 :]
            else:
                slips = [(a, b) for a, b in _PHONETIC if a in lower]
                if not slips:
                    continue
                a, b = rng.choice(slips)
                at = [k for k in range(len(lower)) if lower.startswith(a, k)]
                k = rng.choice(at)
                out = lower[:k] + b + lower[k + len(a) :]
            if out and out != lower and len(out) > 1:
                return out.capitalize() if word[:1].isupper() else out
        return word

    def record(
        self, person: Person, issuer: Issuer, *, later: bool, married: str, moved: Home | None
    ) -> tuple[dict[str, str], list[str]]:  # noqa: E501
        rng = self.rng
        noise: list[str] = []
        # ---- name
        family = person.family
        if person.maiden and not later and married == "maiden":
            family = person.maiden
            noise.append("maiden")
        elif person.maiden and married == "hyphen" and rng.random() < 0.6:
            family = rng.choice([f"{person.family}-{person.maiden}", f"{person.maiden}-{person.family}"])
            noise.append("hyphenated")
        given = list(person.given)
        if len(given) == 2:
            r = rng.random()
            if r < 0.22:
                given = given[:1]
                noise.append("given-cut")
            elif r < 0.26:
                given = given[::-1]
                noise.append("given-order")
        if rng.random() < 0.02 and given[0] in DIMINUTIVES:
            given[0] = rng.choice(DIMINUTIVES[given[0]])
            noise.append("diminutive")
        if rng.random() < 0.035:
            family = "-".join(self.typo(p) if k == 0 else p for k, p in enumerate(family.split("-")))
            noise.append("family-typo")
        if rng.random() < 0.035:
            k = rng.randrange(len(given))
            given[k] = self.typo(given[k])
            noise.append("given-typo")
        sep = "-" if len(given) == 2 and rng.random() < 0.3 else " "
        given_text = sep.join(given)
        r = rng.random()
        if r < issuer.swapped:
            pn = f"{given_text}^{family}"
            noise.append("swapped")
        elif r < issuer.swapped + issuer.unsplit:
            if rng.random() < 0.75:
                pn = f"{family} {given_text}"
            else:
                pn = f"{given_text} {family}"
                noise.append("given-first")
            noise.append("unsplit")
        else:
            pn = f"{family}^{given_text}"
        pn = self.letters(pn, issuer, noise)
        # ---- birth date
        born = person.born.strftime("%Y%m%d")
        if rng.random() < issuer.birth_missing:
            born = ""
            noise.append("birth-missing")
        else:
            r = rng.random()
            if r < 0.008 and person.born.day <= 12 and person.born.day != person.born.month:
                born = born[:4] + born[6:8] + born[4:6]
                noise.append("birth-dm-swapped")
            elif r < 0.020:
                born = self.wrong_digit(born)
                noise.append("birth-digit")
            elif r < 0.026:
                born = self.transposed(born)
                noise.append("birth-transposed")
        # ---- sex
        sex = person.sex
        r = rng.random()
        if r < issuer.sex_missing:
            sex = rng.choice(["", "", "O"])
            noise.append("sex-missing")
        elif r < issuer.sex_missing + 0.002:
            sex = "F" if sex == "M" else "M"
            noise.append("sex-wrong")
        # ---- address
        address = ""
        home = moved or person.home
        if moved is not None:
            noise.append("moved")
        if rng.random() < issuer.address:
            address = self.address(home, issuer, noise)
        else:
            noise.append("address-missing")
        # ---- CNP
        national_id = ""
        if rng.random() < issuer.cnp:
            national_id = person.cnp
            r = rng.random()
            if r < 0.015:
                k = rng.randrange(13)
                national_id = (
                    national_id[:k] + str((int(national_id[k]) + rng.randint(1, 9)) % 10) + national_id[k + 1 :]
                )
                noise.append("cnp-digit")
            elif r < 0.02:
                national_id = national_id[:12]
                noise.append("cnp-short")
        n = self.counters[issuer.name] = self.counters.get(issuer.name, rng.randint(1000, 90000)) + rng.randint(1, 40)
        row = {
            "truth_person": str(person.pid),
            "issuer_kind": issuer.kind,
            "issuer": issuer.name,
            "patient_id": issuer.id_style.format(n),
            "patient_name": pn,
            "birth_date": born,
            "sex": sex,
            "address": address,
            "national_id": national_id,
        }
        return row, noise

    def letters(self, text: str, issuer: Issuer, noise: list[str], what: str = "name") -> str:
        """The institution's diacritics and case."""
        form = self.rng.choices(["comma", "cedilla", "none"], issuer.diacritics)[0]
        text = text.translate({"comma": _COMMA, "cedilla": _CEDILLA, "none": _ASCII}[form])
        if form != "comma":
            noise.append(f"{what}-diacritics-{form}")
        if self.rng.random() < issuer.upper:
            text = text.upper()
        return text

    def address(self, home: Home, issuer: Issuer, noise: list[str]) -> str:
        rng = self.rng
        street = home.street
        if rng.random() < 0.03:
            words = street.split()
            k = max(range(len(words)), key=lambda j: len(words[j]))
            words[k] = self.typo(words[k])
            street = " ".join(words)
            noise.append("address-typo")
        long_types = {
            "Str.": "Strada",
            "Bd.": "Bulevardul",
            "Șos.": "Șoseaua",
            "Calea": "Calea",
            "Aleea": "Aleea",
            "Intr.": "Intrarea",
        }
        if rng.random() < issuer.formal:
            parts = [f"{home.street_type} {street} nr. {home.number}"]
            if home.block:
                parts.append(home.block)
            place = home.locality if not home.village else f"sat {home.locality}, com. {home.locality}"
            postcode = f" {home.postcode}" if rng.random() < 0.8 else ""
            parts.append(f"{place}{postcode}")
            if rng.random() < 0.2:
                parts.append("jud. Iași")
            text = ", ".join(parts)
        else:
            style = rng.random()
            kind = long_types[home.street_type] if style < 0.4 else home.street_type.rstrip(".")
            block = home.block.replace(".", "").replace(",", "") if home.block and rng.random() < 0.6 else ""
            bits = [kind, street, home.number, block, home.locality]
            if rng.random() < 0.25:
                bits.append(home.postcode)
            text = " ".join(b for b in bits if b)
            if rng.random() < 0.15:  # DICOM's street^other^city^state^zip^country form
                text = f"{kind} {street} {home.number}^^{home.locality}^IS^{home.postcode}^RO"
            noise.append("address-plain")
        return self.letters(text, issuer, noise, "address")

    def wrong_digit(self, born: str) -> str:
        for _ in range(50):
            k = self.rng.choice([2, 3, 5, 6, 7, 7, 6])
            out = born[:k] + str(self.rng.randrange(10)) + born[k + 1 :]
            if out != born and _valid(out):
                return out
        return born

    def transposed(self, born: str) -> str:
        for _ in range(50):
            k = self.rng.choice([2, 4, 6])
            out = born[:k] + born[k + 1] + born[k] + born[k + 2 :]
            if out != born and _valid(out):
                return out
        return self.wrong_digit(born)


def _valid(yyyymmdd: str) -> bool:
    try:
        date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))
    except ValueError:
        return False
    return 1900 <= int(yyyymmdd[:4]) <= 2026


def generate(identities: int, seed: int) -> list[dict[str, str]]:
    """About `identities` identity rows (exactly that many: the last person's are cut)."""
    rng = random.Random(seed)
    population = Population(rng)
    recorder = Recorder(rng)
    rows: list[dict[str, str]] = []
    counts = [1, 2, 3, 4]
    count_weights = [0.38, 0.32, 0.20, 0.10]
    done = 0
    while len(rows) < identities:
        population.household()
        if rng.random() < 0.02:  # a namesake of someone already drawn
            population.namesake(rng.choice(population.people))
        for person in population.people[done:]:
            rows.extend(identities_of(person, population, recorder, rng.choices(counts, count_weights)[0]))
        done = len(population.people)
    rows = rows[:identities]
    rng.shuffle(rows)  # the order identities arrive in
    return rows


def identities_of(person: Person, population: Population, recorder: Recorder, count: int) -> list[dict[str, str]]:
    rng = population.rng
    issuers = _sample(rng, ISSUERS, count)
    # a married woman's maiden name is on her earlier identities only (if she married between them)
    married = "married"
    if person.maiden:
        r = rng.random()
        if r < 0.25 and count > 1:
            married = "maiden"  # her first identity (or more) under the maiden name
        elif r < 0.33:
            married = "hyphen"
    moved_after = rng.random() < 0.15 and count > 1
    new_home = None
    out = []
    first_maiden = max(1, rng.randint(1, count - 1)) if married == "maiden" else 0
    for k, issuer in enumerate(issuers):
        if moved_after and k >= 1 and new_home is None and rng.random() < 0.6:
            new_home = population.home()
        later = k >= first_maiden
        row, noise = recorder.record(person, issuer, later=later, married=married, moved=new_home)
        row["noise"] = " ".join(person.tags + noise)
        out.append(row)
    return out


def _sample(rng: random.Random, issuers: list[Issuer], count: int) -> list[Issuer]:
    pool, out = list(issuers), []
    for _ in range(min(count, len(pool))):
        pick = rng.choices(pool, [i.share for i in pool])[0]
        pool.remove(pick)
        out.append(pick)
    return out


COLUMNS = ["truth_person", "issuer_kind", "issuer", "patient_id", "patient_name", "birth_date", "sex", "address",
           "national_id", "noise"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=12000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("linkage.csv"))
    args = parser.parse_args(argv)
    rows = generate(args.identities, args.seed)
    with args.out.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    persons = len({r["truth_person"] for r in rows})
    sys.stderr.write(f"{len(rows)} identities of {persons} persons -> {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
