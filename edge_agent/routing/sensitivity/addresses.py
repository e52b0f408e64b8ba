"""Street addresses: US/UK, German, Dutch, Nordic, French, Spanish, Italian, Portuguese.

Category ``street_address`` (restricted). Forms: a house number and capitalised words
ending in a street type (``221 Baker Street``, ``data/street_suffixes.txt``); a one-word
street name with a street-type ending and a number (``Lindenstraße 40``, ``Hauptstr. 5``,
``Molenweg 169``, ``Tolstraat 88-2``, ``Storgatan 12``, ``Vesterbrogade 3``,
``data/street_types.txt``); two words (``Berliner Straße 5``); a number and a French
street word (``12 rue de la Paix``, ``153 avenue Jean Jaurès``); a Romance street word,
a name and a number (``Calle Sierpes 12``, ``Avenida de la Constitución, 6``, ``Av.
Diagonal 211``, ``Via dei Mille 18``, ``Rua Augusta 45``, ``data/street_words.txt``); two
to four words and a number before a postcode and a city (``Unter den Linden 77, 10117
Berlin``, ``Am Markt 3, 28195 Bremen``; postcodes of five digits, ``1071 XJ``, ``1100-048``,
``111 22``); structured records with the street and the house number in separate fields
(ISO 20022/SEPA ``<StrtNm>``/``<BldgNb>``, JSON ``"street"``/``"houseNumber"``).

Organisations' addresses are public, by a fail-closed rule: an address is public only
when (a) an organisation's name is attached to it (the last four words before it, up to a
comma or dash, include an organisation word or a legal form: "the Rijksmuseum,
Museumstraat 1", "Museo del Prado, Calle ...", "Acme GmbH, Hauptstr. 5",
``data/organisation_words.txt``) or its sentence is visitor information ("opening
hours", "Öffnungszeiten", "horaires", "horario", "how do I get to",
``data/visitor_words.txt``), and (b) no person data is near it: no person's name (the
names list of :mod:`.names`, outside the street name itself), honorific, possessive,
"lives"/"wohnt"/"woont"/"habite"/"vive", delivery word ("ship to", "Lieferadresse",
"livrer chez", "envía a", "shipping_address") or e-mail/phone sign within 150 characters.
A company address on a delivery note for a person stays restricted.

Generalised (issue 13): an address word that announces someone's address ("my address
is", "Adresse:", "mi dirección es", "ich wohne in", "woont op", "habite au") and a house
number or postcode later on its line (or the next) is an uncertain finding whatever the
street's spelling or case (not an IP/MAC/e-mail address, a date or a venue's address);
address/street columns of CSV tables are read row by row; the postcode may be on the
next line, four bare digits or followed by a lower-case city when a street type is in
the street; ALL-CAPS German streets and Polish "ul." count.
"""

from __future__ import annotations

import re
from typing import Final

from edge_agent.routing.sensitivity.matching import Handler, Hit, Scan
from edge_agent.routing.sensitivity.names import name_spans
from edge_agent.routing.sensitivity.terms import alternation, entries

_PARTICLES: Final = (
    r"(?:de las|de los|de la|de l'|del|dels|de|della|delle|dei|degli|di|do|da|dos|das|d')"
)

_WORD: Final = r"\p{Lu}[^\s,0-9]*"
"""A capitalised word (checked loosely here: RE2 is much faster on ``[^\\s,0-9]`` than on
``\\pL`` inside repetitions; the handler checks the words of Romance street names)."""

ADDRESS_RULE = (
    r"(?P<en>\b[0-9]{1,5}[A-Za-z]?,? (?:(?:[A-Z][A-Za-z'\-]*\.?|[0-9]{1,3}(?:st|nd|rd|th)) ){1,4}"
    r"(?:" + alternation("street_suffixes.txt") + r")\b\.?)"
)
"""English street addresses: a house number, capitalised words, a street type."""

GERMANIC_RULE = (
    r"(?P<de>\b[A-ZÄÖÜÅØÆ][a-zäöüßåøæéèáíóú\-]*(?:" + alternation("street_types.txt") + r") ?"
    r"[0-9]{1,4}(?:[a-z]\b|-[0-9]{1,3})?)"
    r"|(?P<deup>\b[A-ZÄÖÜ][A-ZÄÖÜß\-]*(?:STRASSE|STRAßE|STR\.|WEG|ALLEE|PLATZ|GASSE|RING|DAMM|"
    r"STRAAT|LAAN|GRACHT|PLEIN|GATAN|VEJ) ?[0-9]{1,4}[A-Za-z]?\b)"
    r"|(?P<de2>\b[A-ZÄÖÜ][a-zäöüß\-]+ (?:Straße|Strasse|Str\.|Weg|Allee|Platz|Gasse|Ring|Damm) "
    r"[0-9]{1,4}[a-z]?\b)"
)
"""German, Dutch and Nordic street names with a street-type ending and a house number."""

FRENCH_RULE = (
    r"(?P<fr>\b[0-9]{1,4}(?: ?(?:bis|ter))?,? (?i:rue|avenue|av\.|boulevard|bd|place|all[ée]e|"
    r"chemin|impasse|quai|cours|route) (?:(?:de la|de l'|du|des|de|d'|la|le|l')\s?)?" + _WORD + ")"
)
"""French street addresses: a house number, a street word, a capitalised name."""

ROMANCE_RULE = (
    r"(?P<es>\b(?:" + alternation("street_words.txt") + r")(?: [^\s,0-9]+){1,6},? "
    r"(?:n\.? ?|nº ?|no\.? ?|n\.º ?)?[0-9]{1,4}\b)"
)
"""Spanish, Catalan, Italian and Portuguese street names: a street word, up to six words
(the handler wants capitalised words and particles only), a house number."""

POSTAL_RULE = (
    r"(?P<postal>\b[0-9]{1,4}[a-z]?)(?:,? |,?\r?\n)"
    r"(?:[0-9]{5}|[0-9]{4} ?[A-Z]{2}|[0-9]{4}-[0-9]{3}|[0-9]{3} [0-9]{2}|[0-9]{4}) \pL\pL+"
)
"""A house number before a postcode and a city; the handler reads the street (two to
four capitalised words and particles) before the number. The rule starts at the number:
starting at a capitalised word would keep the set's automaton busy on every one."""

ADDRESS_WORD_RULE = (
    r"(?P<addrword>(?i:\b(?:address|adresse|anschrift|direcci[oó]n|domicilio|adres|indirizzo|"
    r"endere[cç]o|morada|wohnadresse|postadresse)\b"
    r"|\b(?:wohne|wohnt|wohnen|wohnhaft|woon|woont|wonen|habite|habitons|vivo|vive|vivimos|"
    r"lives|resides|abito|moro|mora)[ \t]+(?:in|at|en|op|au|à|a|aan|im|am|an|on|"
    r"no|na|em|der|die|dem)\b))"
)
"""An address word that announces a person's address ("my address is", "Adresse:",
"mi dirección es", "ich wohne in", "woont op", "habite au"); the handler reads a house
number or postcode on its line (or the next), whatever the street's spelling or case
(fail closed: an uncertain finding). The pattern holds no filler after the phrase: a
lingering "rest of the line" state cost the set's automaton ~0.4 us per 4 KB."""

STRUCTURED_RULE = (
    r"(?P<structured>(?i:<StrtNm>[^<\n]+</StrtNm>\s*<BldgNb>[^<\n]+</BldgNb>"
    r"|[\"'](?:street|street_?name|stra(?:ss|ß)e|straat|rue|calle|via)[\"']\s*:\s*[\"'][^\"'\n]+"
    r"[\"']\s*,\s*[\"'](?:house_?number|hausnummer|huisnummer|num[eé]ro|n[uú]mero|bldg_?nb|"
    r"nr|no)[\"']\s*:\s*[\"']?[0-9]))"
)
"""A street and a house number in separate fields of a record (SEPA XML, JSON)."""

_ORG_ENTRIES: Final = entries("organisation_words.txt")
_ORG: Final = re.compile(
    r"(?i:\w*(?:"
    + "|".join(w for w in _ORG_ENTRIES if w.islower() and len(w) >= 5)
    + r")|(?:"
    + "|".join(w for w in _ORG_ENTRIES if w.islower() and len(w) < 5)
    + r"))\Z|(?:"
    + "|".join(w for w in _ORG_ENTRIES if not w.islower())
    + r")\Z"
)
"""An organisation word: the end of a word for long entries ("Rijksmuseum"), the whole
word for short ones ("zoo"), a legal form as written ("GmbH", "AS")."""
_VISITOR: Final = re.compile(r"(?i)\b(?:" + alternation("visitor_words.txt") + r")\b")
_PERSON_CUE: Final = re.compile(
    r"(?i)\b(?:my|his|her|their|your|mein\w*|sein\w*|ihr\w*|dein\w*|mon|ma|son|sa|mi|su|"
    r"tu|mijn|zijn|haar|je|herr|frau|mr|mrs|ms|dr|mme|mlle|sr|sra|dhr|mevr|c/o|attn|"
    r"lives?|living|wohnt|wohne|woont|woon|habite|vive|vit|chez|ship|shipping\w*|deliver\w*|"
    r"liefer\w*|schick\w*|livr\w*|envía|envia\w*|entrega\w*|bezorg\w*|stuur\w*|customer|"
    r"client\w*|kunde\w*|klant\w*|patient\w*|home|zuhause|domicil\w*|thuis)\b|@|\+[0-9]"
)
_ORDINARY: Final = re.compile(
    r"(?:Spring|Offspring|String|Substring|Herring|Ring|Boring|Gate|Delegate|Aggregate|"
    r"Template|Markt|Platz|Weg|Damm|Ufer|Allee|Gasse|Laan|Kade|Dijk|Partie|Sortie|Tie|"
    r"Vej|Gata|Gade|Katu|Dom)[ ]?[0-9]"
)
"""Words that end like a street type but are no street name (or the bare type alone)."""
_WORDS_BEFORE: Final = re.compile(r"([^\s,;:|()\-\u2013\u2014]+)")


def _organisation_start(text: str, s: int) -> int:
    """Where the organisation's name attached to the address starts (its last four words
    before it, up to a comma or a dash, with an organisation word); -1: none."""
    lo = max(0, s - 80)
    lead = text[lo:s]
    cut = max(lead.rfind("\n"), lead.rfind(". "), lead.rfind("? "), lead.rfind("! "))
    lead = lead[: len(lead.rstrip(" \t,;:|-\u2013\u2014("))]
    words = list(_WORDS_BEFORE.finditer(lead, cut + 1))[-4:]
    for w in words:
        if _ORG.fullmatch(w.group().strip(",'\"")) or _ORG.fullmatch(w.group().rstrip(".,")):
            return lo + words[0].start()
    return -1


def _organisation_after(text: str, e: int) -> bool:
    """An organisation word later in the address's sentence ("Museumstraat 1 is the
    address of the Rijksmuseum")."""
    tail = text[e : e + 80]
    cut = min((i for i in (tail.find("\n"), tail.find(". ")) if i != -1), default=len(tail))
    return any(
        _ORG.fullmatch(w.group().strip(".,;:!?'\"")) for w in _WORDS_BEFORE.finditer(tail[:cut])
    )


_POSTCODE_BEFORE: Final = re.compile(r"[0-9]{4,5}(?:[ \t]?[A-Z]{2})?[ \t]+\Z")


def _visitor_sentence(text: str, s: int, e: int) -> bool:
    lo = max(0, s - 120)
    lead = text[lo:s]
    cut = max(lead.rfind("\n"), lead.rfind(". "))
    tail = text[e : e + 80]
    end = min((i for i in (tail.find("\n"), tail.find(". ")) if i != -1), default=len(tail))
    return _VISITOR.search(lead[cut + 1 :] + " " + tail[:end]) is not None


def _person_near(text: str, s: int, e: int, org: int) -> bool:
    """Person data within 150 characters: a cue word or sign, or a listed name outside
    the street name, the organisation's name (from ``org``) and the city after a
    postcode."""
    lo, hi = max(0, s - 150), min(len(text), e + 150)
    if _PERSON_CUE.search(text, lo, s) or _PERSON_CUE.search(text, e, hi):
        return True
    for ns, _ne in name_spans(text, lo, hi):
        if s <= ns < e or (org != -1 and org <= ns < s):
            continue  # "Calle de Ruiz de Alarcón", "Museo del Prado"
        if _POSTCODE_BEFORE.search(text, max(0, ns - 12), ns):
            continue  # "28014 Madrid": the city
        return True
    return False


_PARTICLE_WORDS: Final = frozenset(
    [
        "am",
        "an",
        "auf",
        "im",
        "in",
        "unter",
        "vor",
        "hinter",
        "bei",
        "zum",
        "zur",
        "der",
        "den",
        "dem",
        "des",
        "die",
        "van",
        "von",
        "de",
        "la",
        "le",
        "les",
        "du",
        "del",
        "della",
        "di",
        "da",
        "do",
        "dos",
        "das",
        "het",
        "op",
        "aan",
    ]
)


def _street_start(text: str, s: int, e: int) -> int:
    """Where the street name before a house number starts: the capitalised words (and
    particles between them) right before the number, up to six, back to a punctuation
    mark ("Min adress är Storgatan 12" -> "Storgatan 12", "Unter den Linden 77" whole,
    "Museo del Prado, Calle de Ruiz de Alarcón 23" -> "Calle de Ruiz de Alarcón 23")."""
    lo = max(0, s - 60)
    words = list(re.finditer(r"\S+", text[lo:e]))[:-1]  # the last one is the number
    if words and lo and not text[lo - 1].isspace():
        words = words[1:]  # a word cut by the window
    start = words[-1].start() if words else s - lo
    for w in list(reversed(words))[:6]:
        word = w.group()
        if word[-1:] in ",;:.?!)" and w is not words[-1]:
            break
        if not (word[:1].isupper() or word.lower() in _PARTICLE_WORDS):
            break
        start = w.start()
    return lo + start


_ROMANCE_PARTICLES: Final = frozenset(
    ("de", "del", "dels", "la", "las", "los", "l'", "d'", "della", "delle", "dei", "degli",
     "di", "do", "da", "dos", "das", "e", "y", "i")
)  # fmt: skip


def _romance_name(candidate: str) -> bool:
    """ "Calle de Ruiz de Alarcón 23": the words between the street word and the number
    are capitalised names and particles, at least one name ("Via email 5" is none)."""
    words = candidate.replace(",", " ").split()[1:-1]
    words = [w for w in words if w.lower() not in ("n", "n.", "nº", "no", "no.", "n.º")]
    names = [w for w in words if w[:1].isupper()]
    return bool(names) and all(w[:1].isupper() or w.lower() in _ROMANCE_PARTICLES for w in words)


_STREETISH: Final = re.compile(
    r"(?i)(?:stra(?:ß|ss)e|str\.|gasse|weg|allee|platz|ring|damm|laan|straat|gracht|plein|kade|"
    r"singel|dijk|voorhout|gate|gata|gatan|vej|vei|veien|vegen|katu|tie|markt|steig|ufer|"
    r"chaussee)\b|(?i:\b(?:rue|avenue|av\.|boulevard|bd|chemin|place|quai|all[ée]e|impasse|via|"
    r"viale|piazza|corso|calle|c/|avenida|avda\.?|plaza|paseo|carrer|rambla|rua|travessa|"
    r"pra[çc]a|street|st\.?|road|rd\.?|lane|drive|ul\.)(?:\s|$))"
)
"""A street type anywhere in a word or as a word of its own, any case."""

_POSTCODE_CITY: Final = re.compile(r"(?:,? |,?\r?\n)[0-9]{4} (?![A-Z]{2}\b)")
"""Four bare digits as the postcode (not "1071 XJ"): a weaker sign than five."""


def _postal_street(text: str, s: int, e: int, match_end: int) -> int:
    """Where the street before "<house number>, <postcode> <city>" starts, or -1: two or
    more capitalised words (with particles), or any words with a street type among them
    when the street or the city is written in lower case or the postcode is four bare
    digits ("calle alcalá 123, 28009 madrid", "Karl Johans gate 22, 0159 Oslo")."""
    start = _street_start(text, s, e)
    number_end = text.find(" ", s) if text.find(" ", s) != -1 else e
    tail = text[e:match_end]
    loose = _POSTCODE_CITY.search(tail) is not None or tail.rstrip().split()[-1][:1].islower()
    if len(text[start:e].split()) >= 3 and (not loose or _STREETISH.search(text, start, s)):
        return start
    line = max(text.rfind("\n", 0, s) + 1, s - 60)
    street = _STREETISH.search(text, line, s)
    if street is None or number_end <= s:
        return -1
    return text.rfind(" ", line, street.start()) + 1 if street.start() > line else line


def public_place(text: str, s: int, e: int) -> bool:
    """The address ``text[s:e]`` is an organisation's or a public place's (see above)."""
    org = _organisation_start(text, s)
    if org == -1 and not (_visitor_sentence(text, s, e) or _organisation_after(text, e)):
        return False
    return not _person_near(text, s, e, org)


def on_address(sc: Scan, m: Hit) -> None:
    kind: str | None = m.kind
    s, e = m.span(kind)
    text = sc.text
    if kind == "en":
        words = text[s:e].split()
        if words[0].rstrip(",").isdigit() and int(words[0].rstrip(",")) == 0:
            return
        # "Dr"/"St" as the suffix needs a street-like word before it ("12 Oak Dr")
        if words[-1].rstrip(".") in ("Dr", "St") and len(words) < 3:
            return
    elif kind in ("de", "deup") and _ORDINARY.match(text, s):
        return  # "Spring 2024", "String 12": a word that only ends like a street type
    elif kind == "postal":
        start = _postal_street(text, s, e, m.span()[1])
        if start == -1:
            return  # "Version 3, 10000 Users": one word is no street
        s = start
    elif kind == "es" and not _romance_name(text[s:e]):
        return
    if public_place(text, s, e):
        return
    sc.add("street_address", s, e)


_ADDRESS_NOUNS: Final = (
    "address", "adresse", "anschrift", "direcci", "domicilio", "adres", "indirizzo", "endere",
    "morada", "wohnadresse", "postadresse",
)  # fmt: skip
_ANNOUNCED_AFTER: Final = re.compile(r"(?i)[ \t]*(?::|=|\b(?:is|es|ist|est|lautet|era|was)\b)")
_POSSESSIVE_BEFORE: Final = re.compile(
    r"(?i)\b(?:my|mi|mon|ma|meine|mein|mijn|his|her|their|our|su|sa|seine|ihre|zijn|haar|"
    r"home|postal|billing|shipping|delivery|mailing|private|privat\w*|neue|new|nueva|"
    r"nouvelle|nieuwe)[ \t]+\Z"
)

_NUMBER_NEAR: Final = re.compile(
    r"(?<![0-9A-Za-z.:,])(?:[0-9]{1,5}[A-Za-z]?(?:[/\-][0-9]{1,4})?|[0-9]{4}[ ]?[A-Z]{2})"
    r"(?![0-9.:xX])"
)
_NOT_AN_ADDRESS_AFTER: Final = re.compile(
    r"(?i)[ \t]+(?:de[ \t]+|d['\u2019][ \t]*)?(?:correo|e-?mail|ip|mac|web|messagerie|courriel|"
    r"[ée]lectronique|mail|url|http|server|servidor|serveur|bitcoin|wallet)"
)
_MONTH_AFTER: Final = re.compile(
    r"(?i)\.?[ \t]+(?:de[ \t]+)?(?:jan|feb|f[ée]v|m[äa]r|mars|apr|avr|abr|ma[iy]|mei|mayo|"
    r"jun|juin|juil|jul|aug|ao[uû]|ago|sep|okt|oct|nov|de[cz]|dic|enero|febrero|marzo|abril|"
    r"junio|julio|agosto|septiembre|octubre|noviembre|diciembre|janvier|f[ée]vrier|avril|"
    r"mai|ao[uû]t|septembre|octobre|novembre|d[ée]cembre|januar|februar|m[äa]rz|juni|juli|"
    r"oktober|dezember|januari|februari|maart|augustus)"
)
_NOT_AN_ADDRESS: Final = re.compile(
    r"(?i)\b(?:ip|ipv4|ipv6|mac|e-?mail|mail|memory|web|url|return|base|physical|virtual|hex|"
    r"bitcoin|btc|eth|wallet|server|host|network|netzwerk|broadcast|gateway|ethernet|"
    r"speicher|contract|vertrag)[ \t\-]*\Z"
)


def on_address_word(sc: Scan, m: Hit) -> None:
    """A person's address announced by a word: a house number or postcode (not an IP,
    a time or a decimal) among the next 80 characters of its line, with letters between
    (a street name) is an address (uncertain: its street is not checked)."""
    text = sc.text
    s, e = m.span("addrword")
    if text[s:e].lower().startswith(_ADDRESS_NOUNS):  # "my address", "Adresse:"
        announced = _ANNOUNCED_AFTER.match(text, e)
        if announced is None and _POSSESSIVE_BEFORE.search(text, max(0, s - 24), s) is None:
            return
        e = announced.end() if announced is not None else e
    word_end = e
    if _NOT_AN_ADDRESS.search(text, max(0, s - 16), s) or "@" in text[s : s + 80]:
        return
    if _NOT_AN_ADDRESS_AFTER.match(text, word_end):
        return  # "dirección de correo", "adresse e-mail", "address IP"
    eol = text.find("\n", word_end, word_end + 80)
    hi = min(len(text), word_end + 80 if eol == -1 else eol)
    if eol != -1 and not text[word_end:eol].strip(" \t:=-"):
        nxt = text.find("\n", eol + 1, eol + 81)  # "Adresse:\nLindenallee 5a"
        hi = min(len(text), eol + 81 if nxt == -1 else nxt)
    for n in _NUMBER_NEAR.finditer(text, word_end, hi):
        between = text[word_end : n.start()]
        if re.search(r"[0-9]\.[0-9]", between):
            return  # an IP address, a version or a decimal first: "address: 192.168.1.20 port 8080"
        after = text[n.end() : min(hi, n.end() + 40)]
        if not (
            any(c.isalpha() for c in between.replace("is", "")) or any(c.isalpha() for c in after)
        ):
            continue
        num = n.group()
        if len(num) == 4 and num[:2] in ("19", "20") and not re.match(r" \w*[A-Z]", after):
            continue  # a year ("wie im Vertrag 2023"), not a postcode before its city
        if _MONTH_AFTER.match(text, n.end()):
            continue  # "el 3 de mayo", "am 3. Mai": a date
        if _found(sc, s, n.end()):
            return
        if public_place(text, n.start(), n.end()) or any(
            _ORG.fullmatch(w.group().strip(".,;:!?'\"")) for w in _WORDS_BEFORE.finditer(between)
        ):
            return  # "The conference address is Messe Berlin, Messedamm 22"
        sc.add("street_address", s, n.end(), certain=False)
        return


_ADDRESS_CELL_WORDS: Final = (
    r"address|adresse|anschrift|direcci[oó]n|domicilio|adres|indirizzo|endere[cç]o|morada|"
    r"street|stra(?:ss|ß)e|calle|rue|straat|addr|wohnort|woonadres|domicile"
)
ADDRESS_COLUMN_RULE = (
    r"(?m)(?:^|[,;\t|])[ \t]*[\"']?(?i:(?:[a-z]+_)?(?:" + _ADDRESS_CELL_WORDS + r")"
    r"(?:[_ \-]?(?:line|name)?[_ \-]?[0-9]?)?)[\"']?[ \t]*(?:[,;\t|]|\r?\n)"
)
"""An address or street word as a cell of a delimited header line."""

_ADDRESS_CELL: Final = re.compile(r"(?i)(?:\b|_)(?:" + _ADDRESS_CELL_WORDS + r")(?:\b|_|[0-9])")
_NOT_ADDRESS_CELL: Final = re.compile(
    r"(?i)(?:ip|mac|e-?mail|mail|web|url|memory|wallet|server|host|billing_?email)[_ \-]?"
    r"(?:address|adresse|adres|direcci[oó]n)"
)
_HOUSE_NUMBER_CELL: Final = re.compile(
    r"(?i)\A[\"' ]*(?:house[_ ]?(?:number|no|nr)|hausnummer|hausnr\.?|huisnummer|huisnr|nr\.?|"
    r"no\.?|n[uú]mero|num[eé]ro|bldg_?nb|building_?number)[\"' ]*\Z"
)
_CELL_DELIMITERS: Final = ",;\t|"


def on_address_column(sc: Scan, m: Hit) -> None:
    """A header line with an address/street column ("name,address", "Straße;Hausnummer"):
    each row's cell there with letters and a house number (in the cell, or in a house
    number column) is a street address (at most 50 rows)."""
    text = sc.text
    s, _e = m.span()
    line_start = text.rfind("\n", 0, s + 1) + 1 if text[s : s + 1] != "\n" else s + 1
    line_end = text.find("\n", s + 1)
    if line_end == -1:
        return
    header = text[line_start:line_end].rstrip("\r")
    delims = [d for d in _CELL_DELIMITERS if d in header]
    if len(delims) != 1:
        return
    d = delims[0]
    cells = header.split(d)
    columns = [
        i
        for i, c in enumerate(cells)
        if _ADDRESS_CELL.search(c) and not _NOT_ADDRESS_CELL.search(c)
    ]
    numbers = [i for i, c in enumerate(cells) if _HOUSE_NUMBER_CELL.match(c)]
    if not columns:
        return
    pos = line_end + 1
    for _ in range(50):
        end = text.find("\n", pos)
        row = text[pos : len(text) if end == -1 else end]
        values = row.split(d)
        if len(values) != len(cells):
            break
        has_number = any(any(ch.isdigit() for ch in values[i]) for i in numbers)
        for i in columns:
            value = values[i].strip(" \"'\r")
            if not any(ch.isalpha() for ch in value) or "@" in value:
                continue
            digit = any(ch.isdigit() for ch in value)
            if digit or has_number:
                vs = pos + sum(len(v) + 1 for v in values[:i]) + values[i].index(value)
                sc.add("street_address", vs, vs + len(value), certain=digit)
        if end == -1:
            break
        pos = end + 1


def _found(sc: Scan, s: int, e: int) -> bool:
    return any(f.category == "street_address" and f.start < e and s < f.end for f in sc.findings)


RULES: Final[list[tuple[str, str, Handler]]] = [
    ("address", ADDRESS_RULE, on_address),
    ("address_de", GERMANIC_RULE, on_address),
    ("address_fr", FRENCH_RULE, on_address),
    ("address_es", ROMANCE_RULE, on_address),
    ("address_postal", POSTAL_RULE, on_address),
    ("address_record", STRUCTURED_RULE, on_address),
    ("address_word", ADDRESS_WORD_RULE, on_address_word),
    ("address_column", ADDRESS_COLUMN_RULE, on_address_column),
]
"""This family's rules as (name, RE2 pattern, handler)."""

__all__ = [
    "ADDRESS_RULE",
    "FRENCH_RULE",
    "GERMANIC_RULE",
    "POSTAL_RULE",
    "ROMANCE_RULE",
    "RULES",
    "STRUCTURED_RULE",
    "on_address",
    "public_place",
]
