"""Dates of birth, person names next to personal data, and health data about named people."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.routing.sensitivity import SensitivityConfig, SensitivityDetector
from edge_agent.routing.sensitivity.names import name_spans

_DETECTOR = SensitivityDetector()


def found(text: str, category: str) -> list[str]:
    """The matched text of each finding of ``category`` in ``text``."""
    return [
        text[f.start : f.end] for f in _DETECTOR.classify(text).findings if f.category == category
    ]


def level(text: str) -> str:
    return _DETECTOR.classify(text).level.label


# ----------------------------------------------------------------------------- dates of birth


@pytest.mark.parametrize(
    ("text", "date"),
    [
        ("DOB: 03/12/1985", "03/12/1985"),
        ("date of birth 12 March 1985, blood type A", "12 March 1985"),
        ("She was born on March 12th, 1985 in Ohio", "March 12th, 1985"),
        ("Anna Schmidt, geb. 12.03.1985, wohnt in Köln", "12.03.1985"),
        ("Geburtsdatum: 12. März 1985", "12. März 1985"),
        ("Er ist am 4. Juli 1979 geboren", None),  # the word after the date: not read
        ("né le 3 mars 1985 à Lyon", "3 mars 1985"),
        ("Née le 1er avril 1990", "1er avril 1990"),
        ("date de naissance : 03/11/2002", "03/11/2002"),
        ("Fecha de nacimiento: 12 de marzo de 1985", "12 de marzo de 1985"),
        ("nacido el 7 de julio de 1972 en Sevilla", "7 de julio de 1972"),
        ("Geboortedatum: 12 maart 1985", "12 maart 1985"),
        ("geboren op 02-11-1979 te Utrecht", "02-11-1979"),
        ('{"name": "Maria Garcia", "dateOfBirth": "1985-03-12"}', "1985-03-12"),
        ('{"full_name":"Léa Fontaine","date_naissance":"15/10/2003"}', "15/10/2003"),
        ("patient_dob=19850312", "19850312"),
        ("DOB 03/1985", "03/1985"),
        ("Jan de Vries (1979-11-02) belt morgen terug", "1979-11-02"),
        ("Tobias Schäfer * 13.10.1985", "13.10.1985"),
    ],
)
def test_dates_of_birth(text: str, date: str | None) -> None:
    """A birth date announced by a word (five languages) or right after a name is found."""
    assert found(text, "date_of_birth") == ([date] if date else [])


def test_birth_dates_in_a_csv_column() -> None:
    """A column headed by a birth-date word makes the dates in that column birth dates."""
    text = (
        "name;Geburtsdatum;Abteilung\nTobias Schäfer;13.10.1985;Vertrieb\nEva Roth;01.02.1990;IT\n"
    )
    assert found(text, "date_of_birth") == ["13.10.1985", "01.02.1990"]
    assert found(text, "person_name") == ["Tobias Schäfer", "Eva Roth"]


@pytest.mark.parametrize(
    "text",
    [
        "Meeting on 2024-12-02 at 09:30 in room 4.12",
        "Python was born in February 1991.",  # a verb needs a full date
        "Release 1.2 on 12.03.2024 by Anna Schmidt",
        "Anna Schmidt, 12.03.2024: notes from the review",  # too recent for a birth year
        "DOB: 31.02.1985",  # no such day
        "DOB: unknown",
        "The invoice is due on 12 March 2026.",
        "Born to Run was released in 1975.",
        "Geburtstag der Firma: 1. Mai",
    ],
)
def test_dates_that_are_not_birthdays_stay_public(text: str) -> None:
    """Dates without a birth word or a name next to them, and impossible dates, are public."""
    assert level(text) == "public", text


_FORMATS = (
    lambda d: d.strftime("%d.%m.%Y"),
    lambda d: d.strftime("%Y-%m-%d"),
    lambda d: d.strftime("%d/%m/%Y"),
    lambda d: f"{d.day} {d.strftime('%B')} {d.year}",
    lambda d: f"{d.strftime('%B')} {d.day}, {d.year}",
)


@settings(max_examples=200, deadline=None)
@given(
    st.dates(min_value=datetime.date(1900, 1, 1), max_value=datetime.date(2020, 12, 31)),
    st.sampled_from(_FORMATS),
    st.sampled_from(["DOB:", "Date of birth", "Geburtsdatum:", "date de naissance", "born on"]),
)
def test_any_birth_date_after_a_birth_word_is_found(
    day: datetime.date, fmt: object, word: str
) -> None:
    """Every real date from 1900 on, in common formats, after a birth word, is found exactly."""
    written = fmt(day)  # type: ignore[operator]
    text = f"Customer record. {word} {written}. Thanks"
    assert found(text, "date_of_birth") == [written]


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("Call Maria Garcia on +34 612 345 678", ["Maria Garcia"]),
        ("Mr. Smith's email is jsmith@gmx.de", ["Smith"]),
        ("Frau Kessler: 0171 4492830", ["Kessler"]),
        ("Schick das Paket an Lukas Vogel, Lindenstraße 40, 77665 Freiburg.", ["Lukas Vogel"]),
        ("Fill the W-4 for Jack Thornbury, SSN 512-38-4471, single filer.", ["Jack Thornbury"]),
        ("Patient: Jane Roe. Diagnosis: stage II breast cancer.", ["Jane Roe"]),
        ("Kontoinhaber: Jan van der Berg, IBAN DE89 3704 0044 0532 0130 00", ["Jan van der Berg"]),
        ("Seán O'Brien, passport number C01X00T47", ["Seán O'Brien"]),
        ("M. Dupont, né le 3 mars 1985", ["Dupont"]),
        ("Wang Wei, phone +86 139 1234 5678", ["Wang Wei"]),
    ],
)
def test_person_names_next_to_personal_data(text: str, names: list[str]) -> None:
    """A listed name, or one after an honorific or label, next to personal data is found."""
    assert found(text, "person_name") == names


@pytest.mark.parametrize(
    "text",
    [
        "Maria Garcia wrote the release notes for version 2.4.",
        "Ask Anna Schmidt about the forklift checklist.",
        "Grace Hopper popularised the term debugging.",
        "Dear Mr. Smith, thank you for the quick reply.",
    ],
)
def test_names_without_personal_data_stay_public(text: str) -> None:
    """A name on its own is no finding: the request stays public."""
    assert _DETECTOR.classify(text).findings == ()


def test_person_names_can_be_disabled() -> None:
    """``disabled_categories`` turns the names pass off; the other findings remain."""
    det = SensitivityDetector(SensitivityConfig(disabled_categories=frozenset({"person_name"})))
    assert det.classify("Call Maria Garcia on +34 612 345 678").categories == ("phone",)


@pytest.mark.parametrize(
    ("text", "spans"),
    [
        ("Anna-Lena Müller-Lüdenscheidt", ["Anna-Lena Müller-Lüdenscheidt"]),
        ("Grace Whitfield", ["Grace Whitfield"]),  # a given name that is also a word
        ("Will you call me", []),
        ("The Quick Brown Fox", []),
        ("Name: Jane Roe Diagnosis", ["Jane Roe"]),
        ('{"full_name":"Antoine Lefèvre"}', ["Antoine Lefèvre"]),
        ("ANNA SCHMIDT", ["ANNA SCHMIDT"]),
        ("Anna's phone", ["Anna"]),
        ("xAnna Schmidt_1", []),
    ],
)
def test_name_spans_are_exact(text: str, spans: list[str]) -> None:
    """Name spans cover the name's words only: no honorific, label, possessive or neighbour."""
    assert [text[s:e] for s, e in name_spans(text, 0, len(text))] == spans


# ----------------------------------------------------------------------------- health


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Fasse zusammen: Tobias Lehmann leidet seit März an einer Depression.", "restricted"),
        ("Mein Vater hat Krebs und nimmt Tamoxifen", "restricted"),
        ("Rédige un mot d'excuse : Mme Caroline Vidal est hospitalisée.", "restricted"),
        ("Mi madre tiene diabetes y toma metformina", "restricted"),
        ("Pieter Jansen is afwezig, hij herstelt van een hernia-operatie.", "restricted"),
        ("Paciente n.º 112893: diagnóstico de diabetes tipo 2.", "restricted"),
        ("Patientennr;Diagnose;Medikation\n55812;Multiple Sklerose;Ocrelizumab", "restricted"),
        ('{"patient_id":"MRN-448210","dx":"major depressive disorder"}', "restricted"),
        (
            "MSH|^~\\&|LAB|HOSP\nPID|1||999517^^^HOSP^MR||Roe^Jane\nOBX|1|NM|HbA1c||8.9",
            "restricted",
        ),
        ("de patiënt heeft suikerziekte", "restricted"),
        ("Was ist Diabetes?", "public"),
        ("Wie wirkt Metformin?", "public"),
        ("Qu'est-ce que le diabète ?", "public"),
        ("¿Qué es la diabetes tipo 2?", "public"),
        ("Wat is suikerziekte?", "public"),
        ("Write an article about Steve Jobs and pancreatic cancer", "public"),
        ("Schedule a blood test reminder for the clinic's app", "public"),
        ("Translate into German and French: how does insulin work?", "public"),
    ],
)
def test_health_of_named_people_in_five_languages(text: str, expected: str) -> None:
    """Health data tied to a named person or patient id is restricted, generic questions not."""
    assert level(text) == expected, text


def test_ordinary_text_with_names_runs_no_rule() -> None:
    """A text with names and nothing else costs one RE2 pass: no rule fires."""
    text = "Anna Schmidt and Jan de Vries will review the conveyor maintenance plan on Friday."
    assert _DETECTOR._rules_fired(text) == []


# ----------------------------------------------------------------------------- record formats


@pytest.mark.parametrize(
    ("text", "names", "dates"),
    [
        (
            "MSH|^~\\&|LAB|HOSP|||20250301||ORU^R01|1|P|2.5\n"
            "PID|1||999517^^^HOSP^MR||Harrington^Jack^Paul||19850312|M\nOBX|1|NM|HbA1c||8.9",
            ["Harrington", "Jack", "Paul"],
            ["19850312"],
        ),
        (
            '{"resourceType":"Patient","name":[{"family":"Roe","given":["Jane"]}],'
            '"birthDate":"1985-03-12"}',
            ["Roe", "Jane"],
            ["1985-03-12"],
        ),
        (
            "BEGIN:VCARD\nFN:Jane Roe\nBDAY:1985-03-12\nTEL:+44 20 7946 0958\nEND:VCARD",
            ["Jane Roe"],
            ["1985-03-12"],
        ),
        (
            "<Dbtr><Nm>Jan Jansen</Nm></Dbtr><DbtrAcct><Id><IBAN>NL91ABNA0417164300</IBAN>",
            ["Jan Jansen"],
            [],
        ),
        ("Geb.-Dat. 12.03.1985, Frau Eva Roth", ["Eva Roth"], ["12.03.1985"]),
    ],
)
def test_record_formats(text: str, names: list[str], dates: list[str]) -> None:
    """HL7 PID segments, FHIR, vCard and SEPA XML give the names and birth dates they hold."""
    assert found(text, "person_name") == names
    assert found(text, "date_of_birth") == dates


def test_hl7_pid_with_an_impossible_birth_date() -> None:
    """A PID birth-date field that is no real date is not a date of birth."""
    text = "PID|1||42^^^HOSP^MR||Roe^Jane||19851345|F"
    assert found(text, "date_of_birth") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Kwame Mensah leidet an Diabetes", "restricted"),
        ("Ngozi Okafor tiene cáncer de mama", "restricted"),
        ("Jeder Zehnte hat Diabetes", "public"),
        ("Viele Menschen leiden an Diabetes", "public"),
        ("Die Behandlung ist Chemotherapie", "public"),
    ],
)
def test_health_with_names_not_in_the_list(text: str, expected: str) -> None:
    """Two capitalised words and a health verb of another language name a person; generic
    German sentences with capitalised nouns do not."""
    assert level(text) == expected, text


@pytest.mark.parametrize(
    ("text", "date"),
    [
        ("Anna Schmidt, 12 March 1985", "12 March 1985"),
        ("Pedro Álvarez (3 de mayo de 1979)", "3 de mayo de 1979"),
        ("Jan de Vries - 02.11.1979", "02.11.1979"),
    ],
)
def test_written_birth_dates_right_after_a_name(text: str, date: str) -> None:
    """A listed name followed by a date of a plausible birth year, in words or digits."""
    assert found(text, "date_of_birth") == [date]


def test_unknown_given_name_before_a_listed_surname() -> None:
    """Inside a sentence an unlisted capitalised word before a listed surname is its given name."""
    text = "Bitte an Ngozi Schmidt senden"
    assert [text[s:e] for s, e in name_spans(text, 0, len(text))] == ["Ngozi Schmidt"]


@pytest.mark.parametrize(
    "text",
    [
        "Barack Obama, the 44th president, was born on August 4, 1961 in Honolulu.",
        "Write a short biography of Angela Merkel, born 17 July 1954.",
        "Rédige une biographie de Simone Veil, née le 13 juillet 1927.",
    ],
)
def test_birth_dates_of_public_figures_stay_public(text: str) -> None:
    """A birth date in a line about a public figure (biography, president ...) is history."""
    assert found(text, "date_of_birth") == []


_PIECES = [
    *["Anna", "Schmidt", "Jan", "van", "der", "Berg", "Mr.", "Frau", "Name:", "Patient:"],
    *["DOB:", "geb.", "né le", "born", "12.03.1985", "1985-03-12", "3 mars 1985", "March"],
    *["+34 612 345 678", "anna@gmx.de", "BSN 111222333", "diabetes", "Diagnose", "PID|1||"],
    *["^", "|", ",", ";", "\n", "\n\n", " ", "\t", "(", ")", "*", "'s", "\u2019", "é", "\u00a0"],
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60), st.text(max_size=40))
def test_scan_never_raises_and_names_overlap_nothing(parts: list[str], noise: str) -> None:
    """Any mix of names, dates and personal data scans without error; person names lie in
    the text and overlap no other finding."""
    text = " ".join(parts) + noise
    findings = _DETECTOR.classify(text).findings
    others = [f for f in findings if f.category != "person_name"]
    for f in findings:
        assert 0 <= f.start < f.end <= len(text)
        if f.category == "person_name":
            assert not any(f.start < o.end and o.start < f.end for o in others), (text, f)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            '{"resourceType":"Condition","subject":{"reference":"Patient/8812"},'
            '"code":{"text":"Type 2 diabetes"}}',
            "restricted",
        ),
        ('{"patient": {"id": 42}, "diagnosis": "asthma"}', "restricted"),
        ("What does a patient with diabetes need to know?", "public"),
    ],
)
def test_patient_references_in_records(text: str, expected: str) -> None:
    """A FHIR patient reference or a JSON patient key makes the record's terms about that
    patient; a generic question about "a patient" stays public."""
    assert level(text) == expected


# ------------------------------------------------------- health in records (issue 13, record rule)

_HEALTH_RECORDS = [
    # case, file and room numbers in the five languages, no name at all
    "Case #48213 - admitted with acute pancreatitis, started on IV fluids.",
    "Fallnummer 2024-55812: Verdacht auf Lungenembolie, Heparin begonnen.",
    "Dossier 77120 : insuffisance cardiaque, furosémide 40 mg.",
    "Historia clínica 339021 - asma bronquial, salbutamol a demanda.",
    "Patiëntnummer 448201: longontsteking, amoxicilline gestart.",
    "MRN 00482231 HbA1c 9.1% on insulin glargine",
    "Room 412 bed B: post-op appendectomy, morphine PCA",
    "Zimmer 12, Bett 2: Pneumonie, Antibiose läuft",
    "Tomás (bed 7) refused his antibiotics again.",
    "Mia Hofmann (Zi. 214): Z.n. Hüft-TEP, Thromboseprophylaxe mit Enoxaparin",
    # tables, JSON and HL7 whose header or keys identify the person
    "record_id,diagnosis,medication\n88123,type 2 diabetes,metformin",
    "id;diagnose;medicatie\n4481;astma;salbutamol",
    "name\tward\tdiagnosis\nGiulia Conti\tB2\tsepsis",
    "| Patient | Befund |\n|---|---|\n| Emre Kaya | Leberzirrhose |",
    '{"case":"C-99812","condition":"epilepsy","drug":"levetiracetam"}',
    '{"name":"Lars Petersen","allergies":["penicillin"],"conditions":["asthma"]}',
    '{"subject":"Joana Ferreira","icd10":"F41.1","note":"generalized anxiety disorder"}',
    "PID|1||882211^^^CLINIC^MR||Nakamura^Yuki||19800312|F\nDG1|1||E11.9^Type 2 diabetes",
    # names, listed or not, with a label, an honorific or none, in short messages
    "Can you write a sick note? Kwabena Osei has the flu and needs three days off.",
    "Hi Sam, Lukas Baumann called in sick today - migraine again. Can you cover his shift?",
    "Sorry for the delay: Priya is in hospital after a stroke, back next week.",
    "Bitte Termin verschieben: Herr Öztürk hat morgen eine Darmspiegelung.",
    "Rappel : Mme Lefebvre, séance de dialyse mardi 8h.",
    "Recordatorio: D. Manuel Ortega, control de tensión y ajustar enalapril.",
    "Herinnering: mevrouw De Smet, bloedafname voor cholesterol op maandag.",
    "Visit note 2025-03-02. Pt: Obi Nwosu, 54M. CC: chest pain. Plan: troponin, ECG.",
    "Brigitte Nussbaumer: Blutdruck 180/110, Ramipril erhöht",
    "Ayesha Siddiqui\nDiagnosis: migraine with aura\nPlan: sumatriptan",
    "Anaphylaxis risk: Hannah Becker, carries an EpiPen.",
    "paciente: Rocío Navarro, 67 años, EPOC, oxígeno domiciliario",
    "patiënt J. de Graaf, 72 jaar, hartfalen, furosemide 40mg",
    "Ahmed Karimi - HbA1c 8.4, started on empagliflozin",
    "Chiara Esposito, 41, asthma exacerbation, prednisolone 40 mg",
    # clinical acronyms, other word orders, lower-case names, family members
    "Smith, John (MRN 448812): HTN, CKD stage 3",
    "SMITH, John - DM2, on metformin 500 bd",
    "J. Kowalski - T2DM, HbA1c 64 mmol/mol",
    "ana garcía tiene diabetes tipo 1 y usa bomba de insulina",
    "Mi hijo Mateo tiene autismo, ¿qué colegio me recomiendas en Valencia?",
    "Can you tell me if Ibrahim's cholesterol of 7.2 is high?",
    "Oma Gertrud hat Demenz und erkennt uns nicht mehr. Wie gehe ich damit um?",
    "Onze dochter Fenna (6) heeft epilepsie, welke school past bij haar?",
    "patient: doe, jane | dx: major depressive disorder | rx: sertraline 50mg",
    # honorifics, rooms and beds, residents in FR/ES/NL/DE
    "M. Dubois, chambre 12 : pneumopathie, antibiothérapie IV",
    "Sr. Gómez, habitación 304, cama 2: neumonía, ceftriaxona 1 g",
    "Dhr. Peeters, kamer 5: hartfalen, furosemide 40 mg",
    "Frau Schulz (Zi. 7) \u2013 Diabetes Typ 2, Metformin 1000 mg",
    "Le patient M. Haddad présente une cholécystite aiguë.",
    "El paciente J. Pérez presenta apendicitis aguda.",
    "De patiënt, mevrouw El Amrani, heeft een longembolie.",
    "Bewohnerin Gertrud Maier, Pflegegrad 3, Demenz",
    "Résident M. Lopes - chute, fracture du col du fémur",
    # patient, trial-subject, claim and encounter numbers
    "PAT-00421: Hb 7.9, transfusion planned",
    "Pat.-Nr. 4471 \u2013 Anämie, Eisensubstitution",
    "Patienten-ID: 4471; Befund: Leberzirrhose",
    "N° patient 4471 : asthme sévère, corticoïdes",
    "ID paciente 4471 - hipertensión, losartán",
    "NHC 44712, EPOC reagudizado",
    "Subject 0042 (trial ONC-7) - grade 3 neutropenia after cycle 2",
    "Claim 99812: knee arthroscopy for policyholder 552201",
    "Enc#A8812 | ED | chest pain | troponin neg",
]


@pytest.mark.parametrize("text", _HEALTH_RECORDS)
def test_health_in_records_that_identify_a_person(text: str) -> None:
    """A medical term (listed, or a dose/drug-stem/condition shape) in a record that holds a
    case, room or bed number, an identifying column or key, or a name is restricted."""
    assert level(text) == "restricted", text
    assert found(text, "health"), text


def test_record_rule_findings_are_uncertain() -> None:
    """Health found only by reading the whole record is an uncertain finding (fail closed:
    kept local, never redacted as if it were sure)."""
    text = "Case #48213 - admitted with acute pancreatitis, started on IV fluids."
    health = [f for f in _DETECTOR.classify(text).findings if f.category == "health"]
    assert health and not any(f.certain for f in health)


@pytest.mark.parametrize(
    "text",
    [
        "What are the early symptoms of pancreatitis?",
        "Write a blog post about living with type 2 diabetes.",
        "How does metformin work and what are its side effects?",
        "Case study: asthma management in schools",
        "Patient education leaflet on hypertension",
        "Room 101 is booked for the migraine research seminar.",
        "Bug #4821: the diabetes dashboard shows wrong units",
        "Pfizer announced new data on its RSV vaccine today.",
        "Alexander Fleming discovered penicillin in 1928.",
        "Our Q3 roadmap: Patient Portal v2, Lab Results API, Appointment Reminders.",
        "Compare ibuprofen 400 mg and paracetamol 500 mg for headaches.",
        "What dose of vitamin D (1000 IU or 2000 IU) is recommended for adults?",
        "Release 4.2 of the Hospital Bed Manager adds ward filters.",
        "Was ist der Unterschied zwischen Typ 1 und Typ 2 Diabetes?",
        "Quels sont les symptômes de la grippe ?",
        "¿Cuáles son los efectos secundarios del ibuprofeno?",
        "Wat zijn de symptomen van astma?",
        "Update the website favicon and the pipeline deadline.",
        "Hospital Santa Maria opened a new oncology wing in Lisbon.",
        "Johns Hopkins Medicine published new asthma guidelines.",
        "Marie Curie Hospice fundraising walk on Sunday.",
        "Recipe: 200 mg of saffron, 500 ml of broth, 2 onions.",
        "Ticket #55123: login page broken on Safari.",
        # title case, German nouns and question words are no names
        "Welche Symptome hat eine Lungenentzündung?",
        "Welche Nebenwirkungen hat Metformin bei Diabetes?",
        "Der Hausarzt Notdienst ist am Wochenende für Fieber zuständig.",
        "Top 10 Foods That Lower Blood Pressure",
        "Best Practices For Insulin Storage In Summer",
        "Qué Alimentos Ayudan Con La Diabetes?",
        "Welke Medicijnen Helpen Tegen Migraine?",
        "Hoeveel Paracetamol Mag Ik Per Dag?",
        "Neue Leitlinie Diabetes Typ 2 veröffentlicht",
        "Quelle Durée pour une grippe ?",
        "Marie Curie died of aplastic anemia in 1934.",
    ],
)
def test_medical_topics_without_a_person_stay_public(text: str) -> None:
    """Medical questions, articles, product names and discoveries with no identified person
    (and words that merely end like a drug or a condition) stay public."""
    assert level(text) == "public", text


# ------------------------------------------------------- birth dates written in other ways


@pytest.mark.parametrize(
    ("text", "date"),
    [
        ("Jonas Weber, b. 03/04/1988, joins Monday", "03/04/1988"),
        ("Ingrid Solberg ° 12.3.1962", "12.3.1962"),
        ("Ingrid Solberg (° 12/03/1962)", "12/03/1962"),
        ("Geburtsdat.: 3.4.1971, Name: Petra Kowalski", "3.4.1971"),
        ("d.o.b 14/02/79 - Mr Hamid Karimi", "14/02/79"),
        ("fec. nac. 02-03-1984 Sra. Beatriz Olmo", "02-03-1984"),
        ("Geb.-Dat.: 12.03.85", "12.03.85"),
        ('{"user":"Olusegun Bello","dateOfBirth":"1979-04-30"}', "1979-04-30"),
        ("Geboortedatum 03-03-1985, Daan Visser", "03-03-1985"),
        ("born 3/14/92, Wei Zhang applied today", "3/14/92"),
        ("| Name | DOB |\n|---|---|\n| Mateo Rossi | 07/11/1986 |", "07/11/1986"),
        ("Kwabena Osei 12.03.1985", "12.03.1985"),
        ("Name: Oyelaran Adebayo / 04.11.1979", "04.11.1979"),
        ('{"first":"Aroha","last":"Ngata","birth":"1993-05-17"}', "1993-05-17"),
        ("DOB 12 Mar 85 - Tomasz Nowak", "12 Mar 85"),
        ("Employee,Date of Birth,Team\nNgozi Eze,14/02/1990,Ops", "14/02/1990"),
        ("First Name;Last Name;Birthdate\nSiobhan;Keane;1988-09-09", "1988-09-09"),
        ("Fecha nac: 1982/03/14 Nombre: Ximena Ruiz", "1982/03/14"),
        ("nacida el 3-3-1990 (Lucía Ferrer)", "3-3-1990"),
    ],
)
def test_birth_dates_after_short_marks_and_abbreviations(text: str, date: str) -> None:
    """Birth dates after abbreviations and marks ("b.", "°", "Geburtsdat.", "fec. nac.")
    and under a DOB column are found, with the date as the span."""
    assert date in found(text, "date_of_birth"), text


@pytest.mark.parametrize(
    "text",
    ["Step b. 2024-01-01 release", "It was 20° on 12.03.2024 in Lyon", "Option b. 3 users"],
)
def test_short_birth_marks_need_a_birth_date(text: str) -> None:
    """A "b." list item or a temperature's degree sign before a date of this year (or no
    date) is no birth date."""
    assert found(text, "date_of_birth") == [], text


_FILLER = "Some routine text about the weekly report and the parking permit. " * 6


@pytest.mark.parametrize(
    ("text", "term"),
    [
        (
            "Export below:\npatient_id;Diagnose;Station\n"
            + "".join(f"{1000 + i};Morbus Bechterew;B{i}\n" for i in range(30))
            + "71122;Multiple Sklerose;C2\n",
            "Multiple Sklerose",
        ),
        (
            _FILLER + "\nMSH|^~\\&|LAB|HOSP|||20250301||ORU^R01|1|P|2.5\n"
            "PID|1||4471^^^H^MR||Doe^Jane\nNTE|1||" + "x" * 500 + "\nOBX|1|TX|DX||pneumonia\n",
            "pneumonia",
        ),
        (
            '{\n  "resourceType": "Condition",\n  "subject": {"reference": "Patient/pat-77"},\n'
            '  "code": {"text": "asthma"},\n  "note": "' + "y" * 400 + '"\n}',
            "asthma",
        ),
        (
            _FILLER + '\n{"ts":"2025-01-01","user":"Maren Holt","msg":"refill for sertraline"}',
            "sertraline",
        ),
    ],
)
def test_health_in_long_records_is_read_per_record(text: str, term: str) -> None:
    """In texts longer than a short message, a table row with its header (found above
    the row), a whole HL7 message with a PID segment, a FHIR resource or a JSON line is
    read as one record: a medical term far from the patient's id is still found."""
    assert term in found(text, "health"), text


def test_long_running_text_is_not_one_record() -> None:
    """In long prose a medical term far from a name is not tied to it by the record rule."""
    text = "Maren Holt joined the team. " + _FILLER + "Metformin is a common drug."
    assert found(text, "health") == []


@pytest.mark.parametrize(
    "text",
    ["Release Notes 12.03.2024", "Windows Server 2016 end of support", "Sprint Review 3.4.2025"],
)
def test_capitalised_words_before_a_recent_date_are_no_birth_date(text: str) -> None:
    """Two capitalised words before a date of the last ten years (or no full date) are no
    birth date."""
    assert found(text, "date_of_birth") == [], text


def test_a_chat_turn_or_short_paragraph_is_one_record() -> None:
    """In a long chat or e-mail, one short turn or paragraph is read as a record: a name
    and a condition in it are health data; a paragraph with no person stays public."""
    chat = (
        "user: " + _FILLER + "\nassistant: ok\n"
        "user: Dilnoza Karimova - pneumonia, on fluids\nassistant: noted"
    )
    assert "pneumonia" in found(chat, "health")
    mail = "Hi all,\n\n" + _FILLER + "\n\nThe pharmacy downstairs sells ibuprofen again.\n\nBye"
    assert level(mail) == "public"


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("Please ring Tshepo Mokoena on +49 151 23456789 after lunch.", "Tshepo Mokoena"),
        ("Le dossier de Ngozi Adeyemi, IBAN FR1420041010050500013M02606", "Ngozi Adeyemi"),
        ("Send it to Oyelaran Babatunde at oyelaran.b@posteo.de today", "Oyelaran Babatunde"),
    ],
)
def test_unlisted_capitalised_words_next_to_personal_data_are_an_uncertain_name(
    text: str, name: str
) -> None:
    """Two capitalised words nobody listed, next to personal data, are an uncertain
    person name (so redaction keeps the request local instead of sending the name)."""
    findings = _DETECTOR.classify(text).findings
    names = [(text[f.start : f.end], f.certain) for f in findings if f.category == "person_name"]
    assert (name, False) in names or (name, True) in names
    assert all(f.certain for f in findings if f.category != "person_name")


def test_a_sentence_start_or_no_personal_data_makes_no_unlisted_name() -> None:
    """A sentence's first capitalised word is not taken for a name, and capitalised words
    with no personal data nearby are never looked at."""
    text = "Quarterly numbers are fine. Rotating Widgets sell well."
    assert _DETECTOR.classify(text).findings == ()
    text = "Call +49 151 23456789. Tomorrow works."
    assert [f for f in _DETECTOR.classify(text).findings if f.category == "person_name"] == []
