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


# --------------------------------------------------------------------------------------
# Generalisation (issue 13, validation feedback): contact data in shapes and languages
# that no rule was written for, each one written for these tests.

_GENERALISED_CONTACT = [
    "Lukas erreichst du unter 0176 23456789",
    "ruf Jana an: 0151-9876543",
    "Mi número es 612 345 678, llámame",
    "Puedes escribirme al 699 123 456",
    "mon 06 12 34 56 78",
    "appelle-moi au 07.81.23.45.67",
    "bel me op 06-12345678",
    "my cell is 415 555 0134",
    "text me at 202-555-0178",
    "Contact: Maria Lopez, 612345678",
    "Tel 030 12345678",
    "Tel.: +49 (0)30 1234 5678",
    "Handy: 0049 176 2345 6789",
    "Tlf: 22 33 44 55",
    "móvil 633-112-233",
    "cel. 55 1234 5678",
    "whatsapp +34 612 34 56 78",
    "Phone: (020) 7946 0018",
    "Emma Wilson\nMobile 07700 900123",
    "Best regards,\nKarl Huber\n+43 664 1234567",
    "-- \nSophie Martin\n06 98 76 54 32\nsophie.martin@posteo.fr",
    "BEGIN:VCARD\nFN:Jan de Vries\nTEL;TYPE=cell:0612345678\nEND:VCARD",
    "name,phone\nAnna,0176 1234 5678\nBen,0151 2233445",
    "nombre;móvil\nLucía;612 345 678",
    "[10:02] Tom: call me on 07911 123456",
    "Tom (10:03): my number is 07911 123456",
    "his number: 0161 496 0000",
    "You can reach Pieter at 020-5551234",
    "Teléfono de contacto: 91 123 45 67",
    "Numéro de portable : 06 11 22 33 44",
    "telefono: 333 1234567",
    "Her phone is +1 555 0100 2233",
    "number: 0612 345 678",
    "Ich wohne in der Hauptstraße 12, 3. Etage, 80331 München",
    "meine Adresse: Lindenallee 5a\n50667 Köln",
    "Anna Schmidt, Bahnhofstr. 7, 01067 Dresden",
    "Schickt es an Weg am Hang 3, 79100 Freiburg",
    "Lieferadresse: Am Sonnenhang 14, 70565 Stuttgart",
    "KARL-MARX-STRASSE 101, 12043 BERLIN",
    "mi dirección es calle mayor 15, 3º 2ª, 28013 madrid",
    "Vivo en C/ Alcalá 123, piso 4, puerta B, 28009 Madrid",
    "envíalo a Avda. de la Paz nº 7, bajo, 41001 Sevilla",
    "Calle Real, 22 - 2ºB, 15003 A Coruña",
    "j'habite au 5 bis rue des Lilas, 75019 Paris",
    "Mon adresse : 14, avenue Victor Hugo, app. 3, 69006 Lyon",
    "livrer au 3 impasse du Moulin 33000 Bordeaux",
    "12 rue de la République\n13001 Marseille",
    "Jan woont op Keizersgracht 123-II, 1015 CJ Amsterdam",
    "mijn adres is Dorpsstraat 8, 3512 AB Utrecht",
    "Via Roma 10, 20121 Milano, scala B",
    "Rua das Flores, 45, 2.º esq., 4050-262 Porto",
    "Send it to 42 Elm Street, Apt 3B, Springfield, IL 62704",
    "my address is 17 rose lane, bristol bs1 4dj",
    "Flat 2, 14 Kings Road, London SW3 4NX",
    "Marie Dupont\n8 place Bellecour\n69002 Lyon",
    "Storgatan 12, 111 22 Stockholm",
    "Mannerheimintie 5 A 7, 00100 Helsinki",
    "ul. Marszałkowska 84/92 m. 5, 00-514 Warszawa",
    "Wiener Straße 3/2/14, 1040 Wien",
    "Rue de la Loi 16, 1000 Bruxelles (chez Martine)",
    "jane [at] acme [dot] com",
    "jane(at)acme(dot)de",
    "jane at acme dot com",
    "jane.doe (at) posteo.de",
    "j.doe {at} gmx {dot} net",
    "jdoe AT gmx DOT de",
    "lucia punto garcia arroba gmail punto com",
    "marie chez orange point fr",
    "jan apenstaartje ziggo punt nl",
    "k.fischer [ät] web [punkt] de",
    "hans_mueller at gmx dot de",
    "jane@acme[.]com",
    "jane [@] acme.com",
    "jane @ acme . com",
    "j-doe<at>mail<dot>com",
    "mail me: jdoe at protonmail dot com",
    "jane dot doe at gmail dot com",
    "JANE [AT] ACME [DOT] COM",
    "jane_doe(a)gmx.de",
    "jane(at)acme.com",
    "jane -at- acme -dot- com",
    "jane [at] acme . com",
]

_GENERALISED_PUBLIC = [
    "Call our free hotline 0800 123 4567 for support",
    "Kundenservice: 0800 330 1000 (kostenlos)",
    "Service client : 0 800 123 456",
    "Atención al cliente: 900 123 456",
    "Toll-free: 1-800-555-0199",
    "Call 1-888-555-0100 for customer support",
    "Zentrale: 030 12345-0",
    "Standard : 01 44 55 66 77 (du lundi au vendredi)",
    "Centralita: 91 555 12 34",
    "Servicenummer 0900 1234567",
    "The support line is open 9-17 at 0800 222 333",
    "order number 0176 23456789",
    "Invoice 2024-000123456",
    "ISBN 978-3-16-148410-0",
    "version 10.2.3.4455",
    "ticket #4455667788",
    "The meeting is at 10:30 in room 1234567",
    "Flight LH 1234 leaves at 06:45",
    "The Rijksmuseum is at Museumplein 1, 1071 DJ Amsterdam; opening hours 9-17",
    "Siemens AG, Werner-von-Siemens-Straße 1, 80333 München",
    "Musée du Louvre, Rue de Rivoli, 75001 Paris",
    "Deutsche Bahn AG, Potsdamer Platz 2, 10785 Berlin",
    "Hotel Adlon, Unter den Linden 77, 10117 Berlin",
    "Ayuntamiento de Madrid, Calle de Alcalá 45, 28014 Madrid",
    "Version 3, 10000 Users",
    "Python 3.12 released on 2 October 2023",
    "The Eiffel Tower, Champ de Mars, 5 Avenue Anatole France, 75007 Paris",
    "Please address the issue 3 times before release 2.1",
    "IP address: 10.0.0.1",
    "the address is 0x7fff0000",
    "Adresse: siehe Impressum",
    "The MAC address is 00:1A:2B:3C:4D:5E",
    "address: 192.168.1.20 port 8080",
    "My email address is on the website",
    "We need to address 12 open tickets",
    "Die Adresse lautet wie im Vertrag 2023 angegeben",
    "memory address 0x1F4 overflow",
    "Her address is unknown",
    "look at github.com for the code",
    "available at pypi.org",
    "info [at] example [dot] com",
    "jane [at] example [dot] org",
]


@pytest.mark.parametrize("text", _GENERALISED_CONTACT)
def test_contact_data_in_any_shape_stays_on_the_device(text: str) -> None:
    """Phones with any context (possible in some region), addresses announced by a word
    or in many countries' forms and cases, obfuscated e-mails: restricted."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _GENERALISED_PUBLIC)
def test_business_lines_and_public_addresses_stay_public(text: str) -> None:
    """Toll-free and service lines, organisations' and landmarks' addresses, IP/MAC/
    memory addresses and the verb "address" are not personal contact data."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


def test_an_address_announced_by_a_word_is_an_uncertain_finding() -> None:
    """A street nobody's rule knows, after "my address is", is kept local but marked uncertain."""
    text = "my address is 17 rose lane, bristol bs1 4dj"
    found = [f for f in _DETECTOR.classify(text).findings if f.category == "street_address"]
    assert found and not found[0].certain


_MORE_CONTACT = [
    "Anna Berg\nM: 0176 99 88 77 66",
    "Jonas Weber\nT 030 555 01 23",
    "ph: 0161 555 0199",
    "Mob. 0699 1234 5678",
    "Tfno. 955 12 34 56",
    "Durchwahl: -4711 (Frau Keller: 089 555 1234)",
    "Rufnummer von Herrn Kaiser: 0221 555 0102",
    "SMS an 0157 55501234 schicken",
    "dial 020 7946 0999 and ask for Tom",
    "ping me at 07700 900 999",
    "whatsapp me on 0044 7700 900999",
    "tel:+4915755501234",
    '<a href="tel:0301234567">Anruf</a>',
    "phone# 555-0142-88",
    "Mobile #: 0412 555 019",
    "Her digits are 06 55 50 12 34",
    "kannst du Lisa anrufen? 0151 55501234",
    "call Pedro: 611 222 333",
    "llama a Marta al 622 55 50 12",
    "appelle Julie au 06 55 50 12 34 ce soir",
    "mi cel es 55 5123 4567",
    "numer telefonu: 512 345 678",
    "Telefonnummer lautet 0221-5550102",
    "seine Handynummer: 01525 5550123",
    "[09:14] Ana: mi móvil 677 55 50 12",
    "[09:14] Ana: 677 55 50 12 es mi móvil",
    "Ana - 677 555 012",
    "Contacto: Ana Ruiz (677 555 012)",
    "Name;Rufnummer;Ort\nMüller;0176 2345678;Berlin",
    "id,full_name,mobile_phone\n1,Anna Berg,07911 123456",
    '"Name","Telefon (privat)"\n"Jan Kowalski","030 1234567"',
    "nom\tportable\nDupont\t06 12 34 56 78",
    "naam,gsm\nJansen,0612345678",
    "customer_id,phone1,phone2\n4411,612345678,",
    "Vorname,Nachname,Straße,Hausnummer,PLZ,Ort\nAnna,Berg,Lindenweg,12,10115,Berlin",
    "name,address,city\nJohn Smith,42 Elm Street,Springfield",
    "nombre,dirección\nLucía Gómez,Calle Mayor 15 3º 2ª",
    "nom;adresse\nMartin;8 place Bellecour",
    "name,street,zip\nBob,rose lane 17,BS1 4DJ",
    "name,email\nBob,bob [at] posteo [dot] de",
    "Name,Phone\nAnna Berg,+44 7911 123456",
    "Name | Telefon\nAnna Berg | 0176 2345678",
]

_MORE_PUBLIC = [
    "Build 2024.05.17 1234567 failed",
    "The population was 8 336 817 in 2019",
    "Call the API 3 times with 1000000 rows",
    "ISBN 0-306-40615-2",
    "Bestellnummer 0176 2345678",
    "Flight LH 400 1234567",
    "The value 0.1234567 is small",
    "Kundennummer: 0151 55501234",
    "order_number,amount\n12345678,20.00",
    "invoice number;total\n20240012;99,00",
    "sku,contact_count\nAB-1,12345678",
    "ticket,number\nT-1,4455667",
    "name,contact\nACME,info@example.com",
    "host,ip_address\nweb1,10.0.0.1",
    "name,address\nACME,see website",
]


@pytest.mark.parametrize("text", _MORE_CONTACT)
def test_signatures_chats_and_contact_columns_stay_on_the_device(text: str) -> None:
    """Signature lines ("M: ...", "T ..."), chat lines, names with a dash before the
    number, and phone/address columns of CSV tables in several languages are restricted."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _MORE_PUBLIC)
def test_other_numbers_and_columns_stay_public(text: str) -> None:
    """Builds, populations, ISBNs, order/customer numbers and their columns, and IP
    address columns are not contact data."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


_ADDRESSES_ABROAD = [
    "Paquete para Luis: c/ Mayor 5, 2º izq, 28013 Madrid",
    "Pº de Gracia 21, 08007 Barcelona (Marta)",
    "envíalo a Avda Diagonal 640 6ª planta, Barcelona",
    "Giulia Rossi, Via Garibaldi, 12 - 20121 Milano",
    "Rua Augusta nº 45 2º Dto, Lisboa - para a Sofia",
    "Rambla Catalunya 10, 08007 Barcelona, a nombre de Pau",
    "Carrer Gran de Gràcia 15 3r 1a, Barcelona - casa de Jordi",
    "Frau Berger, Kirchgasse 4/3/12, 1070 Wien",
    "Schulstr. 12a, 2. OG links, 45127 Essen - bei Familie Wolf",
    "Mme Dubois, Rue Neuve 14 boîte 3, 1000 Bruxelles",
    "Herr Graf, Bahnhofstrasse 1, 8001 Zürich",
    "Mette Hansen, Vesterbrogade 12, 2. th., 1620 København V",
    "Ola Nordmann, Karl Johans gate 22, 0159 Oslo",
    "Pekka Virtanen, Hämeentie 15 B 23, 00530 Helsinki",
    "Jacques Martin, 12, rue des Écoles, 75005 Paris",
    "the parcel goes to Tom at Apt 4, 221B Baker St, London",
    "Lieferung an S. Wagner, Am Rosenhang 3, 34131 Kassel",
    "envoyer à Claire Petit, 7 allée des Tilleuls, 44000 Nantes",
    "Pieter Jansen\nLange Voorhout 9\n2514 EA Den Haag",
    "Piet, Oudegracht 231 bis, Utrecht",
    "calle alcalá 123, 28009 madrid (mi casa)",
    "LINDENSTRASSE 5, 10969 BERLIN, z. Hd. Herrn Yilmaz",
]

_NOT_ADDRESSES = [
    "In Section 4, 2023 Report shows growth",
    "See Chapter 12, 2024 Edition for details",
    "The Big Bang Theory Season 3\n2010 Episodes list",
    "Windows Server 2019 Standard, 2022 Datacenter",
    "Top 10, 2000 Songs of the decade",
    "Release 5, 1000 Downloads in a week",
    "we had 3, 2000 runs total",
]


@pytest.mark.parametrize("text", _ADDRESSES_ABROAD)
def test_addresses_of_many_countries_and_cases_stay_on_the_device(text: str) -> None:
    """Addresses in ES/IT/PT/AT/DE/BE/CH/DK/NO/FI/FR/UK/NL forms: abbreviations, floors
    and doors, four-digit postcodes, the postcode on the next line, lower and upper case."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize("text", _NOT_ADDRESSES)
def test_numbers_before_years_and_counts_are_no_addresses(text: str) -> None:
    """A number, a comma and a four-digit year or count after capitalised words is no
    house number and postcode unless a street type is there."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text


@pytest.mark.parametrize(
    "text",
    [
        "jane at acme.com (my email)",
        "escríbeme: lucia at posteo.de",
        "mail me: tom at mailbox.org",
    ],
)
def test_a_plain_at_address_next_to_a_mail_word_stays_on_the_device(text: str) -> None:
    """ "name at host.tld" is an address when a mail word is on its line."""
    assert _DETECTOR.classify(text).level is Level.RESTRICTED, text


@pytest.mark.parametrize(
    "text",
    [
        "look at github.com for the code",
        "the docs are at readthedocs.org",
        "download it at python.org, then email me if it fails",
        "we met at booking.com headquarters",
    ],
)
def test_a_place_at_a_domain_is_no_address(text: str) -> None:
    """ "at host.tld" after a verb, a pronoun or a noun is a place, not a mailbox."""
    assert _DETECTOR.classify(text).level is not Level.RESTRICTED, text
