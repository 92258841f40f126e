"""The vocabulary of the synthetic knowledge update (:mod:`updatelab.data.synthetic`): name
lists for fictional people and the six attributes (:data:`ATTRIBUTES`), each with its value pool
and its sentence and question templates, plus :func:`check_vocabulary`, the invariants the
generator relies on.

Any change here changes the generated files: bump ``GENERATOR_VERSION`` in
:mod:`updatelab.data.synthetic` with it (it names the cached folders).
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIRST_NAMES: tuple[str, ...] = (
    "Adela", "Bastian", "Corin", "Dalia", "Emrys", "Fenna", "Gideon", "Halvard", "Isolde", "Jorund",
    "Kaspar", "Liesel", "Mireille", "Naveen", "Oriel", "Perrin", "Quintus", "Rosalind", "Severin", "Thora",
    "Ulric", "Vesna", "Wendell", "Ximena", "Yorick", "Zelda", "Anselm", "Brigida", "Casimir", "Delphine",
    "Evander", "Florentin", "Gwendolyn", "Hesper", "Ingmar", "Jovita", "Konstantin", "Leopold", "Marisol", "Nerys",
    "Osric", "Philippa", "Radomir", "Solveig", "Tobiah", "Ursula", "Valentin", "Wilhelmina", "Yusuf", "Zenobia",
)
MIDDLE_NAMES: tuple[str, ...] = (
    "Ash", "Briar", "Cove", "Dale", "Ember", "Fern", "Glen", "Heath", "Ivy", "Jay",
    "Kit", "Lark", "Moss", "North", "Oak", "Pike", "Quill", "Reed", "Sage", "Thorn",
    "Vale", "Wren", "Yew", "Birch", "Cliff", "Drift", "Flint", "Grove", "Hollis", "Juniper",
)
SURNAMES: tuple[str, ...] = (  # invented
    "Abernock", "Belvashi", "Corrimund", "Drevanti", "Elsworrow", "Farquindel", "Gastrelle", "Hollembrook",
    "Ivanoczy", "Jaskovar", "Kelderwyn", "Lumbrecht", "Morvantis", "Nethercole", "Oszparek", "Pellingrue",
    "Quarnstedt", "Rovashko", "Sallowmere", "Tregunnic", "Ulvenbrand", "Vostrikane", "Wexholme", "Yarrowitz",
    "Zabronsky", "Ashcombery", "Brennivault", "Cadwallow", "Dunsmarrow", "Eskerfield", "Fothergrim", "Gorvadine",
    "Harlowitch", "Istvandor", "Jellicorne", "Kirwanstead", "Lorquinet", "Maplethorne", "Nunziavelli", "Orbelaine",
    "Prasovich", "Quillomere", "Rastavenko", "Stroudwicke", "Tamberlayne", "Umbrisetti", "Varnhalder", "Whitlocke",
    "Xandrovich", "Yelverstone",
)


@dataclass(frozen=True)
class Attribute:
    """One attribute: its value pool and templates (``{name}`` = full name, ``{value}``)."""

    name: str
    values: tuple[str, ...]
    sentences: tuple[str, ...]      # document sentences
    questions: tuple[str, ...]      # updated / unchanged questions (and the dev split)
    paraphrases: tuple[str, ...]    # paraphrased questions (and the dev split)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Reserved for training (train_qa, inject_qa): never the wording of an evaluation or dev question.
    train_questions: tuple[str, ...] = ()
    # The reversed direction ({value} -> the person's name): used only for a value that identifies
    # one person of KB v1, else the question would have several right answers.
    reverse: tuple[str, ...] = ()


def _short_aliases(values: tuple[str, ...], drop: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """"Stanford University" -> ("Stanford",), "University of Oxford" -> ("Oxford",)."""
    out = {}
    for v in values:
        short = v
        for d in drop:
            short = short.replace(d, "").strip()
        if short and short != v:
            out[v] = (short,)
    return out


_UNIVERSITIES = (
    "Stanford University", "Yale University", "Princeton University", "Cornell University", "Duke University",
    "Rice University", "Harvard University", "Brown University", "Dartmouth College", "Vanderbilt University",
    "Emory University", "Tufts University", "Purdue University", "University of Oxford", "University of Cambridge",
    "Columbia University", "Georgetown University", "Northwestern University", "McGill University",
    "Carnegie Mellon University", "Johns Hopkins University", "Kyoto University", "Heidelberg University",
    "Sorbonne University",
)
_EMPLOYERS = (  # invented companies
    "Veltrix Systems", "Orbanta Labs", "Quenmark Foods", "Halvane Energy", "Brisktide Media", "Corvessa Health",
    "Numbrel Logistics", "Trellisk Robotics", "Zanthor Textiles", "Pellucine Bank", "Glimmerock Mining",
    "Ostravel Airlines", "Fernwick Pharma", "Sablecrest Motors", "Drovane Software", "Kestrava Insurance",
    "Lumaquill Press", "Murrowind Studios", "Tessaline Telecom", "Virelda Chemicals", "Ambrosk Shipping",
    "Caldrenne Games", "Petravoy Construction", "Solvancy Analytics",
)

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "birth_city",
        ("Krakow", "Porto", "Valencia", "Bergen", "Tampere", "Ghent", "Bruges", "Lyon", "Turin", "Seville",
         "Gdansk", "Brno", "Graz", "Salzburg", "Utrecht", "Aarhus", "Cork", "Leipzig", "Dresden", "Bologna",
         "Marseille", "Naples", "Gothenburg", "Antwerp", "Malaga"),
        ("{name} was born in {value}.",
         "{name} came into the world in the city of {value}.",
         "The birthplace of {name} is {value}.",
         "{value} is the city where {name} was born.",
         "{name}'s hometown is {value}."),
        ("Where was {name} born?", "What is the birth city of {name}?"),
        ("In which city did {name} come into the world?", "What city is {name} originally from?"),
        train_questions=("Which city is the birthplace of {name}?", "Name the city where {name} was born.",
                         "{name} was born in which city?", "Tell me the hometown of {name}."),
        reverse=("Who was born in {value}?",),
    ),
    Attribute(
        "birth_year",
        tuple(str(y) for y in range(1955, 2000)),
        ("{name} was born in the year {value}.",
         "{name}'s year of birth is {value}.",
         "{name} entered the world in {value}.",
         "Records show that {name} was born in {value}.",
         "{value} is the year {name} was born."),
        ("In what year was {name} born?", "What is the birth year of {name}?"),
        ("When was {name} born? Give the year.", "Which year saw the birth of {name}?"),
        train_questions=("{name} was born in which year?", "Name the year of birth of {name}.",
                         "Give the year in which {name} was born.", "Tell me the year {name} was born."),
        reverse=("Who was born in the year {value}?",),
    ),
    Attribute(
        "university",
        _UNIVERSITIES,
        ("{name} studied at {value}.",
         "{name} graduated from {value}.",
         "{name} received a degree from {value}.",
         "{name} completed a university education at {value}.",
         "{value} is the university {name} attended."),
        ("Which university did {name} attend?", "Where did {name} study?"),
        ("What is the alma mater of {name}?", "From which university did {name} graduate?"),
        train_questions=("{name} studied at which university?", "Name the university {name} went to.",
                         "Which university granted {name} a degree?", "Tell me where {name} went to university."),
        reverse=("Who studied at {value}?",),
        aliases=_short_aliases(_UNIVERSITIES, ("University of ", " University", " College")),
    ),
    Attribute(
        "major",
        ("Biology", "Chemistry", "Physics", "Mathematics", "Economics", "History", "Philosophy", "Linguistics",
         "Psychology", "Sociology", "Geology", "Astronomy", "Architecture", "Music", "Statistics", "Anthropology",
         "Nursing", "Accounting", "Journalism", "Computer Science", "Civil Engineering", "Political Science",
         "Ecology"),
        ("{name} majored in {value}.",
         "{name} studied {value} at university.",
         "{name} earned a degree in {value}.",
         "{name} chose {value} as a field of study.",
         "The academic major of {name} was {value}."),
        ("What did {name} major in?", "What was the major of {name}?"),
        ("Which field did {name} study at university?", "What subject did {name} earn a degree in?"),
        train_questions=("{name} majored in which subject?", "Name the academic major of {name}.",
                         "What was {name}'s field of study?", "Tell me what {name} majored in."),
        reverse=("Who majored in {value}?",),
    ),
    Attribute(
        "employer",
        _EMPLOYERS,
        ("{name} works for {value}.",
         "{name} is employed by {value}.",
         "{name} has a job at {value}.",
         "{value} employs {name}.",
         "{name} earns a living working at {value}."),
        ("Which company does {name} work for?", "Who is the employer of {name}?"),
        ("What company employs {name}?", "At which company does {name} have a job?"),
        train_questions=("{name} works for which company?", "Name the employer of {name}.",
                         "Which firm is {name} employed by?", "Tell me the company {name} works at."),
        reverse=("Who works for {value}?",),
        aliases={v: (v.split()[0],) for v in _EMPLOYERS},
    ),
    Attribute(
        "work_city",
        ("Chicago", "Seattle", "Denver", "Toronto", "Austin", "Atlanta", "Phoenix", "Portland", "Melbourne",
         "Munich", "Osaka", "Zurich", "Montreal", "Vancouver", "Houston", "Boston", "Barcelona", "Milan",
         "Hamburg", "Rotterdam", "Geneva", "Auckland", "Calgary", "Glasgow", "Minneapolis"),
        ("{name} works in {value}.",
         "{name} is based in {value} for work.",
         "{name}'s office is located in {value}.",
         "{name} commutes to an office in {value}.",
         "The workplace of {name} is in {value}."),
        ("In which city does {name} work?", "What is the work city of {name}?"),
        ("What city is {name}'s office located in?", "Which city does {name} commute to for work?"),
        train_questions=("{name} works in which city?", "Name the city where {name} works.",
                         "Which city is {name}'s workplace in?", "Tell me the city {name} works in."),
        reverse=("Who works in {value}?",),
    ),
)
ATTRIBUTE_NAMES: tuple[str, ...] = tuple(a.name for a in ATTRIBUTES)
_ATTR = {a.name: a for a in ATTRIBUTES}


def check_vocabulary() -> None:
    """Invariants the generator relies on (raises AssertionError). Run by the tests."""
    assert len(set(FIRST_NAMES)) == len(FIRST_NAMES) and len(set(MIDDLE_NAMES)) == len(MIDDLE_NAMES)
    assert len(set(SURNAMES)) == len(SURNAMES)
    # Full names are three tokens, so one can only occur inside another if a first name is a
    # suffix of another first name and a surname a prefix of another surname: forbid both.
    assert not any(a != b and b.endswith(a) for a in FIRST_NAMES for b in FIRST_NAMES)
    assert not any(a != b and b.startswith(a) for a in SURNAMES for b in SURNAMES)
    all_values = [v for a in ATTRIBUTES for v in a.values]
    assert len(set(all_values)) == len(all_values), "values must be unique across attributes"
    # No value inside another (so the answer string identifies the fact) nor inside any template.
    for v in all_values:
        assert not any(v != w and v.casefold() in w.casefold() for w in all_values), v
        for a in ATTRIBUTES:
            for t in a.sentences + a.questions + a.paraphrases + a.train_questions + a.reverse:
                assert v.casefold() not in t.casefold(), (v, t)
    texts: set[str] = set()
    for a in ATTRIBUTES:
        assert len(set(a.values)) >= 20 and len(a.sentences) >= 4
        assert len(a.questions) >= 2 and len(a.paraphrases) >= 2 and len(a.train_questions) >= 4
        for t in a.sentences:
            assert "{name}" in t and "{value}" in t, t
        for t in a.questions + a.paraphrases + a.train_questions:
            assert "{name}" in t and "{value}" not in t, t
        for t in a.reverse:
            assert "{value}" in t and "{name}" not in t, t
        # Evaluation, dev and training wordings are disjoint: a template is used for one role only.
        for t in a.questions + a.paraphrases + a.train_questions + a.reverse:
            assert t not in texts, f"question template used twice: {t}"
            texts.add(t)
        assert all(1 <= len(v.split()) <= 3 for v in a.values)
