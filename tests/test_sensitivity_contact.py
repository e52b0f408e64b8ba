"""Contact data: phone numbers with context, obfuscated e-mails, reserved example domains,
street addresses outside the US/UK and organisations' public addresses (issue 13)."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.routing.sensitivity import Level, SensitivityDetector
from edge_agent.routing.sensitivity.obfuscated import reserved_domain

_DETECTOR = SensitivityDetector()


def _spans(text: str, category: str) -> list[str]:
    return [
        text[f.start : f.end] for f in _DETECTOR.classify(text).findings if f.category == category
    ]


def _findings(text: str) -> list[tuple[str, str]]:
    return [(f.category, text[f.start : f.end]) for f in _DETECTOR.classify(text).findings]


# ----------------------------------------------------------------------------- phones


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("Plan a call with Amelia Whitfield, reachable on 923-886-9184 after 5pm.", "923-886-9184"),
        ("Pouvez-vous appeler Julien ? Son numéro : +33 7 18 73 55 08.", "+33 7 18 73 55 08"),
        ("Son numéro : 07-15-89-03-41", "07-15-89-03-41"),
        ("klant: bel me terug op +31 178 176 763 aub", "+31 178 176 763"),
        ("klant: bel me terug op 0031 12 931 7391 aub", "0031 12 931 7391"),
        ("nombre,telefono,ciudad\nJavier Navarro,762.502.736,Zaragoza", "762.502.736"),
        (
            "what's Tom Ashby's number again?\nsam: 07700 918 233, he prefers WhatsApp",
            "07700 918 233",
        ),
        ("Erinnere mich, Frau Kessler morgen unter 0171 4492 830 anzurufen.", "0171 4492 830"),
        ("Tel. 030 1234567", "030 1234567"),
        ("Tél. : 01 23 45 67 89", "01 23 45 67 89"),
        ("Móvil: 612 345 678", "612 345 678"),
        ("Handy 0171/2345678", "0171/2345678"),
        ("mobiel: 06-12345678", "06-12345678"),
        ("Marta Castillo,766 5107 60,Granada", "766 5107 60"),
        ("Anna Schmidt: +49 1512 3456789", "+49 1512 3456789"),
        ("Anna Schmidt 0171 2345678", "0171 2345678"),
        ("Frau Kessler: 0171 4492830", "0171 4492830"),
        ('{"customer": "Jan Smit", "mobile_phone": "06-87654321"}', "06-87654321"),
        ("telefono_movil: 612 345 678", "612 345 678"),
        ("(0171) 234 56 78 ist meine Nummer", "(0171) 234 56 78"),
        ("tel. +49 (0) 30 / 123 456 78", "+49 (0) 30 / 123 456 78"),
        ("Tel: (+49) 171 2345678", "+49) 171 2345678"),
        ("phone 0171\u20132345678", "0171\u20132345678"),
        ("Tel.:\u00a0+49\u00a0171\u00a02345678", "+49\u00a0171\u00a02345678"),
        ("Ruf mich an: 0171 2345678", "0171 2345678"),
        ("portable : 06.12.34.56.78", "06.12.34.56.78"),
        ("mobiel: +31 (0)6 12345678", "+31 (0)6 12345678"),
    ],
)
def test_possible_numbers_with_context_are_phones(text: str, number: str) -> None:
    """A number that could be a phone number next to a phone word or a name is one."""
    assert number in _spans(text, "phone"), _findings(text)


def test_a_phone_column_of_a_table_is_found_row_by_row() -> None:
    """Every number under a phone header cell is found, however far below the header."""
    rows = "".join(f"{i};Person {i};0171 23456{i:02d};2024-01-02\n" for i in range(30))
    text = "id;Name;Telefon;Datum\n" + rows
    found = _spans(text, "phone")
    assert len(found) == 30 and found[-1] == "0171 2345629"
    assert _spans("sku,price,phone\n1,2.50,n/a\n2,3.10,none", "phone") == []


def test_a_valid_number_is_certain_and_a_merely_possible_one_is_not() -> None:
    """Valid numbers are certain findings; possible-but-not-valid ones are uncertain."""
    valid = _DETECTOR.classify("Call me on +44 20 7946 0958").findings
    assert [(f.category, f.certain) for f in valid] == [("phone", True)]
    text = "bel me terug op +31 178 176 763"
    number = phonenumbers.parse("+31 178 176 763", None)
    assert phonenumbers.is_possible_number(number) and not phonenumbers.is_valid_number(number)
    possible = [f for f in _DETECTOR.classify(text).findings if f.category == "phone"]
    assert [f.certain for f in possible] == [False]


@pytest.mark.parametrize(
    "text",
    [
        "version 2.13.4 build 20241125.1187",
        "Meeting on 2024-12-02 at 09:30 in room 4.12",
        "Order number 4711 0815 2231 shipped",
        "Kundennummer 100245 ist gesperrt",
        "Serial number 2023-0481-5567-8812",
        "Our validator accepts 6011 2815 0145 8754 as a card number.",
        "Timestamp 1732532410123 ms",
        "Server 192.168.100.201 answers on port 8080",
        "Please contact the front desk about the permit for the new building by 0301234567.",
        "número de pedido 0012 3345 99",
        "The Deutsche Bahn service hotline is +49 30 2970, what are its opening hours?",
        "Release Notes, 2024.12.02",
        "call the function 3 times with 1000000 items each",
        "the number 1234567 is odd",
        "Room 0123 456 789",
        "Order 0171 2345678",
    ],
)
def test_numbers_that_are_not_phones_stay_public(text: str) -> None:
    """Versions, dates, order/serial/card numbers, IPs and service lines are not phones."""
    assert _spans(text, "phone") == [], _findings(text)


def test_a_service_line_with_a_person_is_a_phone() -> None:
    """A hotline word does not exempt a number announced as a person's."""
    assert _spans("my support hotline contact is +49 30 2970", "phone") == ["+49 30 2970"]


_REGIONS = ["DE", "FR", "ES", "NL", "GB", "IT", "US", "BE", "CH", "AT"]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(_REGIONS),
    st.sampled_from(["Tel.: ", "Tél. : ", "Móvil: ", "Handy ", "mobiel ", "Call me on "]),
    st.integers(min_value=0, max_value=10**9),
)
def test_any_possible_international_number_after_a_phone_word_is_found(
    region: str, word: str, seed: int
) -> None:
    """Every number libphonenumber calls possible, in international format, after a
    phone word, is found whole (valid or not)."""
    example = phonenumbers.example_number_for_type(region, phonenumbers.PhoneNumberType.MOBILE)
    assert example is not None
    national = str(example.national_number)
    digits = str(seed).zfill(len(national))[-len(national) :]
    number = phonenumbers.parse(f"+{example.country_code}{digits}", None)
    if not phonenumbers.is_possible_number(number):
        return
    written = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    text = f"{word}{written} - thanks"
    assert written in _spans(text, "phone"), (text, _findings(text))


# ----------------------------------------------------------------------------- e-mail


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Contact: charlotte.caldwell AT outlook DOT com", "charlotte.caldwell AT outlook DOT com"),
        ("Contact: jack_har@proton . me", "jack_har@proton . me"),
        ("Contact: j.pembroke at orange dot fr", "j.pembroke at orange dot fr"),
        ("Contact: h.whitfield{at}web{dot}de", "h.whitfield{at}web{dot}de"),
        ("an felix.hoffmann [ät] proton [punkt] me. Gruß", "felix.hoffmann [ät] proton [punkt] me"),
        ("an tobias_hof [at] yahoo.co [dot] uk. Gruß", "tobias_hof [at] yahoo.co [dot] uk"),
        (
            "Reach me at jonas dot weber at mailbox dot org, thanks",
            "jonas dot weber at mailbox dot org",
        ),
        ("mail name(at)host.de please", "name(at)host.de"),
        ("write to jane[@]acme.io", "jane[@]acme.io"),
        ("write to jane.doe at acme.de", "jane.doe at acme.de"),
        (
            "escríbeme a maria.lopez (arroba) correo (punto) es",
            "maria.lopez (arroba) correo (punto) es",
        ),
    ],
)
def test_obfuscated_email_addresses_are_found(text: str, address: str) -> None:
    """E-mail addresses written to dodge scrapers are found with their whole span."""
    assert _spans(text, "email") == [address], _findings(text)


@pytest.mark.parametrize(
    "text",
    [
        "Look at github.com for the code",
        "It is available at pypi.org and at main.py",
        "x = a @ w.T",
        "meet at the end. Then go",
        "Use the @app.get('/health') decorator",
        "write to jane [at] example [dot] com",
        "Write a test that sends a welcome mail to carol@example.com.",
        '{"to":"user@mail.test","status":"queued"}',
        "Regex for addresses like john.doe@example.org but not john@localhost.",
        "noreply@sub.example.net bounced",
        "ops@corp.invalid",
    ],
)
def test_prose_and_reserved_domains_are_not_addresses(text: str) -> None:
    """Prose with "at", matrix products, decorators and reserved example domains stay public."""
    assert _spans(text, "email") == [], _findings(text)


def test_reserved_domains() -> None:
    """RFC 2606/6761 names are reserved; look-alikes are not."""
    for domain in ("example.com", "mail.example.org", "EXAMPLE.NET", "x.test", "a.invalid",
                   "localhost", "shop.example", "x.localhost"):  # fmt: skip
        assert reserved_domain(domain), domain
    for domain in ("example.de", "myexample.com", "examples.com", "test.com", "acme.io"):
        assert not reserved_domain(domain), domain


# ----------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Schick das Paket an Lukas Vogel, Lindenstraße 129, 28707 Bremen.", "Lindenstraße 129"),
        ("Lieferadresse: Hauptstr. 5, 10115 Berlin", "Hauptstr. 5"),
        ("Femke Visser woont op Molenweg 169, Groningen", "Molenweg 169"),
        ("klant: Mijn adres: Hendrik Vos, Tolstraat 88-2, 1074 VK Amsterdam", "Tolstraat 88-2"),
        ("merci de livrer chez Chloé, 153 avenue Jean Jaurès, 34381 Montpellier", None),
        ('{"shipping_address":"Avenida de la Constitución, 6, 1º A, 18685 Granada"}', None),
        ('customer,address\n447,"Via dei Mille 18, 10140 Torino"', "Via dei Mille 18"),
        ("Contact: sofia.martinez@example.com, Av. Diagonal 211, Barcelona", "Av. Diagonal 211"),
        ("Envía las llaves a Rosa Medina, Calle Sierpes 12, 41004 Sevilla.", "Calle Sierpes 12"),
        ("Min adress är Storgatan 12, 111 22 Stockholm", "Storgatan 12"),
        ("Jeg bor på Vesterbrogade 3, 1620 København", "Vesterbrogade 3"),
        ("Rua Augusta 45, 1100-048 Lisboa, é a minha morada", "Rua Augusta 45"),
        ("Send it to Berliner Straße 5 please", "Berliner Straße 5"),
        ("Unter den Linden 77, 10117 Berlin", "Unter den Linden 77"),
        ("Am Markt 3, 28195 Bremen", "Am Markt 3"),
        ("<PstlAdr><StrtNm>Kerkstraat</StrtNm><BldgNb>12</BldgNb></PstlAdr>", None),
        ('{"street": "Rue des Lilas", "houseNumber": "4", "city": "Lyon"}', None),
    ],
)
def test_addresses_outside_the_us_and_uk_are_found(text: str, address: str | None) -> None:
    """German, Dutch, Nordic, French, Spanish, Italian and Portuguese addresses."""
    found = _spans(text, "street_address")
    assert found, _findings(text)
    if address is not None:
        assert address in found, found


@pytest.mark.parametrize(
    "text",
    [
        "How do I get from the airport to the Rijksmuseum, Museumstraat 1, 1071 XJ Amsterdam?",
        "¿A qué hora abre el Museo del Prado, Calle de Ruiz de Alarcón 23, 28014 Madrid?",
        "Horario de la Sagrada Família, Carrer de Mallorca 401, 08013 Barcelona.",
        "Impressum: Acme GmbH, Hauptstr. 5, 10115 Berlin",
        "Öffnungszeiten: Hauptbahnhof, Europaplatz 1, Berlin",
        "Spring 2024 release notes",
        "The String 12 constructor",
        "Museumstraat 1 is the address of the Rijksmuseum.",
        "The conference is at Hotel Adlon, Unter den Linden 77, 10117 Berlin.",
        "Our HQ: Acme B.V., Keizersgracht 123, 1015 CJ Amsterdam",
        "Version 3, 10000 Users",
        "Windows 11, 2024 Edition",
    ],
)
def test_organisation_addresses_are_public(text: str) -> None:
    """An address attached to an organisation or in visitor information, with no person
    data near it, stays public (and words that only end like street types are none)."""
    assert _spans(text, "street_address") == [], _findings(text)


@pytest.mark.parametrize(
    "text",
    [
        "Bitte an Frau Petra Lang, c/o Acme GmbH, Hauptstr. 5, 10115 Berlin",
        "Ship to Anna Kowalski at Acme GmbH, Hauptstr. 5, 10115 Berlin",
        "Jan Jansen woont naast het Rijksmuseum, Museumstraat 1, Amsterdam",
        "Acme GmbH, Hauptstr. 5, Berlin. Ansprechpartner: Tel. +49 30 1234567",
        "Museumstraat 1, as you know, is where my sister lives",
        "The developer lives at Hauptstr. 5, 10115 Berlin",
    ],
)
def test_organisation_addresses_with_person_data_stay_restricted(text: str) -> None:
    """A person, a delivery word or a phone next to an organisation's address keeps it."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED
    assert _spans(text, "street_address"), _findings(text)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=20),
            st.sampled_from(
                [
                    "Tel. ",
                    "+49 ",
                    "0171 ",
                    "23 45 ",
                    " at ",
                    " dot ",
                    "[at]",
                    "(0)",
                    "Straße ",
                    "Calle ",
                    " 12",
                    "GmbH, ",
                    "Museum, ",
                    "Anna Schmidt",
                    ",",
                    "\n",
                    "@",
                ]
            ),
        ),
        max_size=16,
    )
)
def test_contact_rules_never_raise(parts: list[str]) -> None:
    """Any mix of phone, address and e-mail pieces scans without error, spans in the text."""
    text = "".join(parts)
    for f in _DETECTOR.classify(text).findings:
        assert 0 <= f.start < f.end <= len(text)
