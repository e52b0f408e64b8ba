"""Identifiers named in EN/DE/FR/ES/NL, their check digits, fail-closed typos and MRZ zones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stdnum.de import idnr
from stdnum.fr import nir
from stdnum.nl import bsn

from edge_agent.routing.sensitivity import Finding, SensitivityDetector
from edge_agent.routing.sensitivity.identifiers import is_placeholder
from edge_agent.routing.sensitivity.mrz import check_digit, number_line_ok, td1_ok

_DETECTOR = SensitivityDetector()


def found(text: str, category: str) -> list[tuple[str, bool]]:
    """(matched text, certain) of each finding of ``category`` in ``text``."""
    return [
        (text[f.start : f.end], f.certain)
        for f in _DETECTOR.classify(text).findings
        if f.category == category
    ]


# ----------------------------------------------------------------------------- named IDs


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Mijn BSN is 123456782, klopt dat?", "123456782"),
        ("burgerservicenummer: 1112.22.333", "1112.22.333"),
        ("Sofinummer 111222333 op de loonstrook", "111222333"),
        ("BSN-nummer van de klant: 111 222 333", "111 222 333"),
        ("Steuer-ID: 86 095 742 719", "86 095 742 719"),
        ("Meine steuerliche Identifikationsnummer lautet 86095742719.", "86095742719"),
        ("Steueridentifikationsnummer 86095742719", "86095742719"),
        ("IdNr 86095742719 bitte eintragen", "86095742719"),
        ("mi número de DNI es 12345678Z", "12345678Z"),
        ("NIE: X1234567L", "X1234567L"),
        ("numéro de sécurité sociale : 1 85 05 78 006 048 30", "1 85 05 78 006 048 30"),
        ("mon numéro INSEE est 185057800604830", "185057800604830"),
        ("SSN 512-38-4471 on the W-4", "512-38-4471"),
        ("my NINO is AB123456C", "AB123456C"),
    ],
)
def test_named_ids_with_valid_check_digits_are_certain(text: str, value: str) -> None:
    """An ID after its name in any of the five languages is found, exact span, certain."""
    assert found(text, "national_id") == [(value, True)]


@pytest.mark.parametrize(
    "text",
    [
        "Mijn BSN is 648213570",  # 11-proof fails: a typo of a real one
        "Steuer-ID: 86095742718",
        "DNI 48613709A",
    ],
)
def test_named_id_failing_its_checksum_fails_closed(text: str) -> None:
    """A named value of the ID's exact shape with wrong check digits is an uncertain finding."""
    verdict = _DETECTOR.classify(text)
    assert verdict.level.label == "restricted"
    assert [f.certain for f in verdict.findings if f.category == "national_id"] == [False]


@pytest.mark.parametrize(
    "text",
    [
        "BSN: 123456789",  # a straight run: a placeholder
        "BSN 000000000",
        "burgerservicenummer 111111111",
        "DNI 12345678A",
        "IdNr 12345678901",
        "Our test fixture uses BSN 650829933 as an invalid example; does it fail the 11-proof?",
        "Steuer-ID 86095742718 ist ein ungültiges Beispiel für den Validator",
        "NIR 1 85 05 78 006 048 31",  # the NIR's wrong key stays public (pinned elsewhere)
        "SSN 000-38-4471",  # never issued: how placeholders are written
        "Ich war nie 12345 km weit weg",  # "nie" is also German for "never"
        "the BSN field has 9 digits",
    ],
)
def test_placeholders_and_decoys_stay_public(text: str) -> None:
    """Placeholders, made-up examples and never-issued ranges after an ID's name are public."""
    assert _DETECTOR.classify(text).level.label == "public", text


@pytest.mark.parametrize(
    ("digits", "expected"),
    [
        ("123456789", True),
        ("987654321", True),
        ("000000000", True),
        ("111111110", True),
        ("123123123", True),
        ("123456782", True),  # a straight run and its check digit
        ("648213579", False),
        ("XDA123456", False),  # letters and digits: a real passport shape
    ],
)
def test_is_placeholder(digits: str, expected: bool) -> None:
    """Placeholders are repeated digits, straight runs and repeated groups, not real shapes."""
    assert is_placeholder(digits) is expected


def _bsn_from(prefix: str) -> str | None:
    """The valid 9-digit BSN that starts with ``prefix`` (8 digits), if any."""
    for last in "0123456789":
        if bsn.is_valid(prefix + last):
            return prefix + last
    return None


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="0123456789", min_size=8, max_size=8),
    st.sampled_from(["BSN", "BSN:", "Mijn BSN is", "burgerservicenummer", "sofinummer:"]),
)
def test_any_valid_bsn_after_its_name_is_found(prefix: str, keyword: str) -> None:
    """Every 11-proof BSN that is not a placeholder is found after any of its names."""
    number = _bsn_from(prefix)
    if number is None or is_placeholder(number) or number.startswith("0"):
        return
    text = f"{keyword} {number}, graag controleren"
    assert found(text, "national_id") == [(number, True)]


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet="0123456789", min_size=10, max_size=10))
def test_any_valid_steuer_id_after_its_name_is_found(body: str) -> None:
    """Every valid German IdNr is found after "Steuer-ID"."""
    candidates = [body + d for d in "0123456789" if idnr.is_valid(body + d)]
    if not candidates or is_placeholder(candidates[0]):
        return
    text = f"Steuer-ID: {candidates[0]}"
    assert found(text, "national_id") == [(candidates[0], True)]


def test_nir_after_its_name_is_validated() -> None:
    """A NIR after "numéro de sécurité sociale" is found when its key is right."""
    body = "2840375123456"
    number = body + nir.calc_check_digits(body)
    assert found(f"numéro de sécurité sociale {number}", "national_id") == [(number, True)]


# ----------------------------------------------------------------------------- passports


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("passport number C01X00T47", "C01X00T47"),
        ("Mein Reisepass hat die Nummer C01X00T47", "C01X00T47"),
        ("Reisepassnummer JZH8WVVKR, gültig bis 2031", "JZH8WVVKR"),
        ("Passnummer: CF1234567", "CF1234567"),
        ("numéro de passeport : 12AB34567", "12AB34567"),
        ("passeport n° 18CV45821", "18CV45821"),
        ("número de pasaporte: XDA123456", "XDA123456"),
        ("paspoortnummer NPFK12345", "NPFK12345"),
        ("Traveller: Jane Roe, Passport: 987654321", "987654321"),
    ],
)
def test_passport_numbers_after_passport_words(text: str, value: str) -> None:
    """Passport numbers are found after passport words in all five languages."""
    assert found(text, "passport") == [(value, True)]


@pytest.mark.parametrize(
    "text",
    [
        "passport photo size 35x45 mm",
        "Reisepass 000000000 als Platzhalter",
        "How long does a passport renewal take?",
        "Mi pasaporte caduca en mayo",
    ],
)
def test_passport_lookalikes_are_public(text: str) -> None:
    """Passport words without a document number stay public."""
    assert _DETECTOR.classify(text).level.label == "public"


# ----------------------------------------------------------------------------- MRZ

_TD3 = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<\nL898902C36UTO7408122F1204159ZE184226B<<<<<10"
_TD2 = "I<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<\nD231458907UTO7408122F1204159<<<<<<<6"
_TD1 = (
    "I<UTOD231458907<<<<<<<<<<<<<<<\n7408122F1204159UTO<<<<<<<<<<<6\nERIKSSON<<ANNA<MARIA<<<<<<<<<<"
)


def test_icao_check_digits() -> None:
    """The Doc 9303 check digits of the ICAO specimens are computed as printed."""
    assert check_digit("L898902C3") == 6
    assert check_digit("740812") == 2
    assert check_digit("120415") == 9
    assert number_line_ok(_TD3.split("\n")[1])
    first, second, _third = _TD1.split("\n")
    assert td1_ok(first, second)


@pytest.mark.parametrize(
    ("zone", "category"),
    [(_TD3, "passport"), (_TD2, "national_id"), (_TD1, "national_id")],
)
def test_mrz_zones_are_found_with_their_names(zone: str, category: str) -> None:
    """Each ICAO format gives a certain finding for the number lines and the holder's name."""
    text = f"Please check this scan:\n{zone}\nThanks"
    assert [c for c, certain in found(text, category) if certain]
    assert found(text, "person_name") == [("ERIKSSON<<ANNA<MARIA", True)]


def test_mrz_with_a_wrong_check_digit_next_to_names_fails_closed() -> None:
    """A number line whose check digits fail below a names line is an uncertain finding."""
    text = _TD3.replace("L898902C36", "L898902C37")
    assert found(text, "passport") == [(text.split("\n")[1], False)]
    assert _DETECTOR.classify(text).level.label == "restricted"


def test_stray_mrz_shaped_string_with_wrong_checks_is_public() -> None:
    """A string of the number line's shape with wrong check digits and no names is public."""
    assert _DETECTOR.classify("build 123456789012UTO7408122F1204159ZE184226B").findings == ()


def _number_line(doc: str, birth: str, expiry: str) -> str:
    return (
        f"{doc}{check_digit(doc)}UTO{birth}{check_digit(birth)}F{expiry}{check_digit(expiry)}"
        "<<<<<<<<<<<<<<00"
    )


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet="ABCDEFGHJKLMNPRSTUVWXYZ0123456789", min_size=9, max_size=9),
    st.dates().map(lambda d: d.strftime("%y%m%d")),
    st.dates().map(lambda d: d.strftime("%y%m%d")),
)
def test_any_valid_td3_number_line_is_found(doc: str, birth: str, expiry: str) -> None:
    """Every TD3 number line with right check digits is a certain passport finding."""
    line = _number_line(doc, birth, expiry)
    text = f"P<UTOROE<<JANE<<<<<<<<<<<<<<<<<<<<<<<<<<<<<<\n{line}"
    assert found(text, "passport") == [(line, True)]


# ----------------------------------------------------------------------------- robustness

_PIECES = [
    *[
        "BSN",
        "Steuer-ID",
        "NIE",
        "DNI",
        "NIR",
        "passport",
        "Reisepass",
        "paspoort",
        "pasaporte",
        "passeport",
        "nummer",
    ],
    *[
        "is",
        ":",
        "n°",
        "123456782",
        "86095742719",
        "X1234567L",
        "12345678Z",
        "C01X00T47",
        "P<UTO",
        "<<",
        "<",
        "\n",
    ],
    *["ERIKSSON", "L898902C36UTO7408122F1204159ZE184226B<<<<<10", " ", "-", ".", "é", "\u00a0"],
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60))
def test_scan_never_raises_and_spans_lie_in_the_text(parts: list[str]) -> None:
    """Any mix of ID words, values and MRZ pieces scans without error, spans inside the text."""
    text = " ".join(parts)
    for f in _DETECTOR.classify(text).findings:
        assert isinstance(f, Finding)
        assert 0 <= f.start < f.end <= len(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Steuer-ID von Frau Petra Hoffmann: 86 095 742 719", "86 095 742 719"),
        ("numéro de sécu : 1 85 05 78 006 048 30", "1 85 05 78 006 048 30"),
        ("Steuernummer 21/815/08150", "21/815/08150"),
        ("NIF: 12.345.678-Z", "12.345.678-Z"),
    ],
)
def test_more_id_names_and_written_forms(text: str, value: str) -> None:
    """Names in front of the number, tax numbers and dotted DNI forms are found."""
    assert [v for v, _certain in found(text, "national_id")] == [value]


def test_mrz_in_a_json_string_with_an_escaped_line_break() -> None:
    """An MRZ written into a JSON or log string (lines joined by a written \\n) is found."""
    text = '{"doc":"' + _TD3.replace("\n", "\\n") + '"}'
    assert found(text, "passport") == [(_TD3.split("\n")[1], True)]
    assert found(text, "person_name") == [("ERIKSSON<<ANNA<MARIA", True)]


@pytest.mark.parametrize(
    ("text", "category", "values"),
    [
        (
            "naam;bsn;plaats\nJan Jansen;111222333;Utrecht\nEva de Boer;123456782;Delft\n",
            "national_id",
            ["111222333", "123456782"],
        ),
        ("name,steuer_id,city\nAnna Schmidt,86095742719,Berlin", "national_id", ["86095742719"]),
        ("traveller\tpassport_no\nJane Roe\tC01X00T47", "passport", ["C01X00T47"]),
        ('id,nie\n1,"X1234567L"', "national_id", ["X1234567L"]),
        ("passport,visa\nyes,no\n", "passport", []),
        ("bsn\n000000000\n\n111222333", "national_id", []),  # a placeholder; a blank line ends it
    ],
)
def test_id_names_heading_table_columns(text: str, category: str, values: list[str]) -> None:
    """An ID's name heading a CSV/TSV column makes the values below it IDs of that kind."""
    assert [v for v, _certain in found(text, category)] == values


# ------------------------------------------------- names of IDs as people write them (issue 13)


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Steuer-IdNr.: 86 095 742 719", "national_id"),
        ("Steuer-Id-Nr. 86095742719", "national_id"),
        ("St-IdNr 86095742719", "national_id"),
        ("St.-IdNr.: 86 095 742 719", "national_id"),
        ("TIN: 86095742719 (Germany)", "national_id"),
        ("Taxpayer identification number: 86095742719", "national_id"),
        ("steuerliche ID 86095742719", "national_id"),
        ("Steuerliche Identifikations-Nr. 86095742719", "national_id"),
        ("IdNr 86.095.742.719", "national_id"),
        ("Meine Steuer-ID lautet 86 095\n742 719", "national_id"),
        ("numéro fiscal de référence 30 23 217 600 053", "national_id"),
        ("numéro d'identification fiscale: 3023217600053", "national_id"),
        ("NIF: 12.345.678-Z", "national_id"),
        ("N.I.E.: X1234567L", "national_id"),
        ("BSN: 1112.23.333", "national_id"),
        ("sofi nummer 111222333", "national_id"),
        ("burgerservicenummer: 111-222-333", "national_id"),
        ("Passport No: L898902C3", "passport"),
        ("passport #: 53821947", "passport"),
        ("Reisepassnr.: C01X00T47", "passport"),
        ("Passnummer C4J7R2K91", "passport"),
        ("n.º pasaporte PAA123456", "passport"),
        ("N° passeport : 18AV12345", "passport"),
        ("paspoort nr. NX4K8P2L1", "passport"),
        ("passport: 5382 1947", "passport"),
        # words between the name and the value, in any grammar
        ("Steuer-ID (neu): 86 095 742 719", "national_id"),
        ("die Steuer-ID meines Mannes ist 86095742719", "national_id"),
        ('{"taxId": "86095742719"}', "national_id"),
        ("Reisepass (gültig bis 2031): C01X00T47", "passport"),
        ("my passport, which expires in 2031, is 533380006", "passport"),
        ("passport details: no. 533380006, issued London", "passport"),
        ("Mijn BSN staat op mijn pas: 111222333", "national_id"),
        ("BSN van mijn dochter: 111 222 333", "national_id"),
        ("NIE de mi mujer: X1234567L", "national_id"),
        ("número de pasaporte: xda123456", "passport"),
    ],
)
def test_id_names_in_every_spelling(text: str, category: str) -> None:
    """IDs after their names in abbreviations, inflections and other languages, with
    spaces, dots, hyphens or a line break inside the number, are found."""
    assert found(text, category), text


def test_named_tax_id_placeholder_stays_public() -> None:
    """A straight run after a tax-ID name ("12 345 678 903") is a placeholder, not an ID."""
    assert found("Steuer-IdNr.: 12 345 678 903", "national_id") == []


@pytest.mark.parametrize(
    "text",
    [
        "The passport office is closed. Call 030 1234567 after 2 pm.",
        "Apply for a passport online; the fee is 75 EUR (2024 rates).",
        "Die Steuer-ID hat 11 Ziffern. Beispiel: 12 345 678 903.",
    ],
)
def test_values_after_a_sentence_end_or_placeholders_stay_public(text: str) -> None:
    """A value in the next sentence, a short number or a placeholder is not taken for the
    ID named before it."""
    assert found(text, "passport") == [] and found(text, "national_id") == [], text


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("Name,Passport No.,Nationality\nLiam Byrne,PB1234567,IE", "passport"),
        ("Name;Reisepass-Nr.;Land\nJonas Keller;C01X00T47;DE", "passport"),
        ("nombre,NIE/DNI,ciudad\nLucía Pardo,X1234567L,Madrid", "national_id"),
        ("Naam,BSN-nummer,Woonplaats\nSanne Visser,111222333,Utrecht", "national_id"),
        ("Mitarbeiter;Steuer-ID (IdNr);Abteilung\nKarl Pohl;86 095 742 719;IT", "national_id"),
        ("employee_id,tax_id_de,dept\n4411,86095742719,IT", "national_id"),
        ("| Name | Steuer-ID |\n|---|---|\n| Karl Pohl | 86095742719 |", "national_id"),
        ("name\tpassport number\nAmir Haddad\tK88723190", "passport"),
    ],
)
def test_id_columns_with_longer_header_cells(text: str, category: str) -> None:
    """A column whose header cell holds an ID's name with more words or marks around it
    ("Passport No.", "Steuer-ID (IdNr)", "tax_id_de") makes its cells IDs."""
    assert found(text, category), text


def test_prose_with_commas_after_an_id_name_is_no_table() -> None:
    """An ID's name before a comma in prose, with lines of other shapes below, reads no
    column of values."""
    text = "Bring your passport, and the form.\nDoors open at 9, desk B12345 on the left"
    assert found(text, "passport") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("86095742719 ist meine Steuer-ID", "86095742719"),
        ("111222333 is mijn BSN", "111222333"),
        ("86 095 742 719 (Steuer-ID, bitte eintragen)", "86 095 742 719"),
    ],
)
def test_a_valid_number_before_its_id_name(text: str, value: str) -> None:
    """A number right before an ID's name that passes that ID's check digits is found."""
    assert (value, True) in found(text, "national_id"), text


def test_an_invalid_number_before_an_id_name_stays_public() -> None:
    """A number before an ID's name that fails the check digits is not taken for it."""
    assert found("86095742718 ist keine Steuer-ID", "national_id") == []


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("Datos del cliente: Lucía Pardo, 12.345.678-Z, Madrid", "12.345.678-Z"),
        ("Residente con X-1234567-L desde 2019", "X-1234567-L"),
        ("Inquilino: Y 1234567 X", "Y 1234567 X"),
    ],
)
def test_spanish_ids_with_dots_spaces_and_hyphens(text: str, value: str) -> None:
    """DNI/NIE numbers written with dots, spaces or hyphens inside pass their check letter
    and are found without an ID's name."""
    assert (value, True) in found(text, "national_id"), text
