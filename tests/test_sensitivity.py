"""The on-device sensitivity detector: labelled-set quality, rules per category, API."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.eval_sensitivity import evaluate, load
from edge_agent.routing.sensitivity import (
    CATEGORY_LEVELS,
    Finding,
    Level,
    SensitivityConfig,
    SensitivityDetector,
    Verdict,
)

# The labelled set is ours, so these bars are what the detector must keep: no restricted
# text may be classified lower (a leak), and at most 2% of public/internal texts may be
# raised above their label (each one costs a cloud request that could have been served).
MAX_FALSE_POSITIVE_RATE = 0.02
MIN_LEVEL_RECALL = 0.97

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJkZXZpY2UtNDIiLCJpYXQiOjE3MzI1MDAwMDB9"
    ".Tq3f9ZkQm2W8vX1yB7nE4cR6tU0aL5sD3gH8jK2pQ9w"
)


@pytest.fixture(scope="module")
def detector() -> SensitivityDetector:
    return SensitivityDetector()


def level(detector: SensitivityDetector, text: str) -> str:
    return detector.classify(text).level.label


# ----------------------------------------------------------------------------- labelled set


def test_labelled_set_has_no_leaks_and_few_false_positives(detector: SensitivityDetector) -> None:
    """On the labelled set restricted recall is 100% and the false-positive rate is <= 2%."""
    rows = load()
    assert len(rows) >= 300
    report = evaluate(detector, rows)
    assert report["leaks"] == []
    assert report["restricted_recall"] == 1.0
    assert report["false_positive_rate"] <= MAX_FALSE_POSITIVE_RATE, report["raised"]
    for name, stats in report["levels"].items():
        assert stats["recall"] >= MIN_LEVEL_RECALL, (name, stats)
    for name, stats in report["categories"].items():
        assert stats["recall"] >= 0.9, (name, stats)


def test_labelled_set_covers_every_category_and_level() -> None:
    """Every built-in category and level is exercised by the labelled set."""
    rows = load()
    seen = {c for r in rows for c in r.categories}
    assert seen == set(CATEGORY_LEVELS)
    assert {r.level for r in rows} == set(Level)
    public = [r for r in rows if r.level is Level.PUBLIC]
    assert len(public) >= 150  # hard negatives are most of the set


def test_evaluate_counts_a_leak(detector: SensitivityDetector) -> None:
    """The evaluation reports a restricted text classified lower as a leak (it can fail)."""
    from benchmarks.eval_sensitivity import Row

    rows = [Row("nothing to see here", Level.RESTRICTED, frozenset({"email"}))]
    report = evaluate(detector, rows)
    assert report["restricted_recall"] == 0.0
    assert len(report["leaks"]) == 1
    assert report["categories"]["email"]["recall"] == 0.0


# ----------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("text", "category"),
    [
        ("key AKIAIOSFODNN7EXAMPLE in the logs", "aws_access_key"),
        ("aws_secret_access_key = 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", "aws_access_key"),
        ("GITHUB_TOKEN=ghp_7Hq2Wm4Kx9Lp3Rv6Tz8Bn1Cd5Fg0Jh2Ks4Lm", "api_token"),
        ("glpat-x8Yz2Qw4Er6Ty8Ui0Op2A", "api_token"),
        ("xoxb-2048613957-7730291846523-Qw8Er2Ty4Ui6Op8As0Df2Gh", "api_token"),
        ("sk_live_51Hq2Wm4Kx9Lp3Rv6Tz8Bn1Cd", "api_token"),
        ("sk-ant-api03-Hq2Wm4Kx9Lp3Rv6Tz8Bn1Cd5Fg0Jh2Ks4Lm7Np9Qr-Tt", "api_token"),
        ("AIzaSyD4f8Kq2Lw5Pm9Rt3Vb7Nc1Df4Gh6Jk8Mn0", "api_token"),
        ("api_key: 4fB9kQ2xL7mZ1pR8sT3vW6yN0cE5hJ2a", "api_token"),
        ("Authorization: Bearer 8f3Kq2Lw5Pm9Rt3Vb7Nc1Df4Gh6Jk8Mn0Qs2Tu4Wy", "api_token"),
        (JWT, "jwt"),
        (
            "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n"
            "-----END OPENSSH PRIVATE KEY-----",
            "private_key",
        ),
        ("postgres://fleet:Tr0ub4dor-3@db.example.com:5432/fleet", "connection_string"),
        ("Server=sql01;Database=Inv;User Id=svc;Password=Winter2024!;", "connection_string"),
        ("password=Adm1n!2024", "password"),
        ("mysql -u root -pS3cretRoot99 db", "password"),
    ],
)
def test_credentials_are_restricted(
    detector: SensitivityDetector, text: str, category: str
) -> None:
    """Each credential format is found with its category and makes the text restricted."""
    verdict = detector.classify(text)
    assert verdict.level is Level.RESTRICTED
    assert category in verdict.categories


@pytest.mark.parametrize(
    "text",
    [
        "eyJub3QtYS1qd3Q.c29tZXRoaW5n.ZGF0YQ",  # header is not JSON
        "eyJ0eXAiOiJKV1QifQ.eyJzdWIiOiIxIn0.c2lnbmF0dXJlMTIz",  # JSON header without "alg"
        "api_key = os.getenv('OPENAI_API_KEY')",
        "token: ${GITHUB_TOKEN}",
        "max_tokens: 512",
        "password = os.environ['DB_PASSWORD']",
        "def login(password: str) -> bool: ...",
        "The password is incorrect, try again.",
        "postgres://user:password@localhost:5432/mydb",
        "Authorization: Bearer <token>",
        "pip install scikit-learn, not sk-learn-compatible-estimator-package",
        "What does task-sk-orchestrator-queue-handler-v2 do?",
    ],
)
def test_credential_lookalikes_are_public(detector: SensitivityDetector, text: str) -> None:
    """Placeholders, code references and token-shaped non-secrets are not credentials."""
    assert detector.classify(text).findings == ()


# ----------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("card 4111 1111 1111 1111", "restricted"),
        ("card 4111 1111 1111 1112", "public"),  # Luhn fails
        ("5555-5555-5555-4444", "restricted"),
        ("3782 822463 10005", "restricted"),  # Amex 4-6-5 grouping
        ("4111 11 1111 111 1111", "public"),  # Luhn-valid digits but not grouped like a card
        ("order 1234567812345678", "public"),
        ("Timestamp 1732532410123 ms", "public"),
        ("IBAN DE89 3704 0044 0532 0130 00", "restricted"),
        ("IBAN DE89 3704 0044 0532 0130 01", "public"),  # mod-97 fails
        ("GB82 WEST 1234 5698 7654 32", "restricted"),
        ("GB82 WEST 1234 5698 7654 33", "public"),
        ("SSN 512-38-4471", "restricted"),
        ("SSN 000-38-4471", "public"),  # area 000 is never issued
        ("part 666-12-3456", "public"),  # area 666 is never issued
        ("NINO AB 12 34 56 C", "restricted"),
        ("NIR 1 85 05 78 006 048 30", "restricted"),
        ("NIR 1 85 05 78 006 048 31", "public"),
        ("DNI 12345678Z", "restricted"),
        ("DNI 12345678A", "public"),
        ("codice fiscale RCCMNL83S18D969H", "restricted"),
        ("Steuer-ID 86095742719", "restricted"),
        ("passport number C01X00T47", "restricted"),
        ("passport photo size 35x45 mm", "public"),
        ("UUID 123e4567-e89b-12d3-a456-426614174000", "public"),
        ("sha1 a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0", "public"),
        ("version 2.13.4 build 20241125.1187", "public"),
        ("Serial number 2023-0481-5567-8812", "public"),
    ],
)
def test_numbers_are_validated(detector: SensitivityDetector, text: str, expected: str) -> None:
    """Cards need Luhn, IBANs mod 97, national IDs their checksums; lookalikes stay public."""
    assert level(detector, text) == expected


# ----------------------------------------------------------------------------- contact data


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail jane.roe@posteo.de", "restricted"),
        ("Use the @app.get('/health') decorator", "public"),
        ("npm install lodash@4.17.21", "public"),
        ("git@github.com:acme/fw.git", "public"),
        ("ssh pi@gateway-7.example.com", "public"),
        ("Call me on +44 20 7946 0958", "restricted"),
        ("Customer called from (415) 555-2671", "restricted"),
        ("Rappelez-moi au 06 12 34 56 78", "restricted"),
        ("phone the site manager on 07700 900123", "restricted"),
        ("Call the function 3 times with 1000 items each.", "public"),
        ("Meeting on 2024-12-02 at 09:30 in room 4.12", "public"),
        ("Ship to 1600 Amphitheatre Parkway, Mountain View", "restricted"),
        ("Lieferadresse: Hauptstraße 12, Berlin", "restricted"),
        ("12 rue de la Paix, Paris", "restricted"),
        ("Main Street Bakery wants a new logo", "public"),
        ("Baker Street is a famous address in fiction", "public"),
        ("The Wall Street Journal reported chip shortages", "public"),
    ],
)
def test_contact_data(detector: SensitivityDetector, text: str, expected: str) -> None:
    """E-mails, phone numbers and street addresses are restricted; lookalikes are not."""
    assert level(detector, text) == expected


# ----------------------------------------------------------------------------- health


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("what is diabetes?", "public"),
        ("my mother was diagnosed with diabetes", "restricted"),
        ("How does metformin lower blood sugar?", "public"),
        ("My dad takes warfarin, can he eat spinach?", "restricted"),
        ("I'm pregnant and need a day shift", "restricted"),
        ("John has diabetes and checks his blood sugar at work", "restricted"),
        ("Write a blog post about cancer screening for my newsletter", "public"),
        ("My model predicts diabetes risk from 8 features", "public"),
        ("Patient: Jane Roe. Diagnosis: stage II breast cancer.", "restricted"),
        ("Is ibuprofen OK for me? I'm on lithium.", "restricted"),
        ("The stock market crash caused a depression in 1929", "public"),
        ("This batch of aids for hearing impaired visitors arrives Monday", "public"),
        ("my HIV test came back positive", "restricted"),
    ],
)
def test_health_needs_a_person(detector: SensitivityDetector, text: str, expected: str) -> None:
    """A medical term is restricted only when a specific person is tied to it."""
    assert level(detector, text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # a person in another sentence does not count, wherever the sentence ends
        ("Give me a checklist for the forklift. How does metformin work?", "public"),
        ("Our SLA is 99.9%!\nWhat is diabetes?", "public"),
        ("How does metformin work? Ask me later.", "public"),
        ("List the steps.\n\nMy notes: insulin storage at 4 C.", "restricted"),
        # an abbreviation's full stop does not end the sentence
        ("Dr. Jones says my e.g. diabetes is fine", "restricted"),
        ("Mrs. Alvarez has diabetes", "restricted"),
        ("I was told by Dr. Smith to take insulin", "restricted"),
        # terms next to the person, either side, with punctuation in between
        ("prescribed: me, 20 mg", "restricted"),
        ("(my) ADHD", "restricted"),
        ("ADHD: is it common?", "public"),
        ("Is ADHD common? I wonder.", "public"),
        # any whitespace that str.split() knows separates words
        ("John\x1chas diabetes", "restricted"),
        ("Zoë\u00a0has diabetes", "restricted"),
        ("Anna\u2003—\u2003has\u3000diabetes", "restricted"),
        ("she\x85is pregnant", "restricted"),
        # a word cut by the rule's 160-character window is not read ("enemy" as "my")
        ("the enemy " + "x" * 156 + " diabetes", "public"),
        ("my " + "x" * 150 + " diabetes", "restricted"),  # "my" itself is in the window
    ],
)
def test_health_person_in_the_same_sentence(
    detector: SensitivityDetector, text: str, expected: str
) -> None:
    """Only a person word or name in the term's own sentence ties the term to a person."""
    assert level(detector, text) == expected


def test_phone_word_far_from_a_number_does_not_hide_a_near_one(
    detector: SensitivityDetector,
) -> None:
    """A phone word too far from the next number does not swallow a later, closer one."""
    text = (
        "Please contact the front desk about the parking permit for the new building, "
        "or call 030 1234567."
    )
    assert "phone" in detector.classify(text).categories
    far = "Please contact the front desk about the permit for the new building by 0301234567."
    assert detector.classify(far).findings == ()


_HEALTH_WORDS = (
    "my his her our i he she me him im ive I'm i've I'd he's she's He My HIS ME "
    "has had was is got takes took tested started suffers developed HAS Is "
    "John Mary Alvarez Friday The This Research patient Patient Mr Mrs Dr St "
    "vs e.g i.e approx No DOB about blog write dataset model for with the a of "
    "enemy teacher time theme xi run pump line 3.5 2026-11-25 Mr. Dr. e.g. No. "
    "diabetes Diabetes cancer metformin insulin ADHD AIDS aids HIV hiv-positive"
)
_HEALTH_PIECES = [
    *_HEALTH_WORDS.split(),
    *["blood sugar", "blood\nsugar", "type 2 diabetes", "birth control", "crohn's"],
    *[" ", " ", " ", "  ", "\n", "\n\n", "\n \n", "\t", "\x0b", "\x1c", ". ", "! "],
    *["? ", ".", ", ", " - ", "'", ".\n", " (", ") ", "_", "-", "/", "\x00", "\x01"],
    *[".Dr. ", "\nDr.\n", "?! ", ".. "],
]
_UNICODE_PIECES = ["\u2014", "\u2019", "\u00a0", "\u2003", "\x85", "é", "İ", "É"]
_HEALTH_TEXTS = st.one_of(  # ASCII text takes the substring path, other text the regex path
    st.lists(st.sampled_from(_HEALTH_PIECES), max_size=150),
    st.lists(st.sampled_from(_HEALTH_PIECES + _UNICODE_PIECES), max_size=150),
)


def _expected_health(detector: SensitivityDetector, text: str) -> list[tuple[int, int]]:
    """The health rule as written: its regex, then the word-level rule or a record cue."""
    from edge_agent.routing.sensitivity import health

    regex = detector._rules[detector._health][0]  # the rule's own regex, compiled
    spots = health.clinical_spots(text)
    found = []
    for m in regex.finditer(text):
        s, e = m.span()
        record = any(s - 400 <= p <= e + 200 for p in spots)
        if health.health_about_person(text, s, e) or record:
            found.append((s, e))
    return found


@settings(max_examples=400, deadline=None)
@given(_HEALTH_TEXTS)
def test_health_shortcuts_find_what_the_rule_finds(parts: list[str]) -> None:
    """The set's gates, the substring search and the windowed person search are necessary
    conditions of the health rule: the findings are those of the rule applied directly."""
    text = "".join(parts)
    # the record rule's findings (health_records) are uncertain and not this rule's
    health = (f for f in _DETECTOR.classify(text).findings if f.category == "health")
    got = [(f.start, f.end) for f in health if f.certain]
    assert got == _expected_health(_DETECTOR, text)


def test_health_shortcuts_on_the_labelled_set(detector: SensitivityDetector) -> None:
    """On every labelled text the health findings are those of the rule applied directly."""
    for row in load():
        got = [
            (f.start, f.end)
            for f in detector.classify(row.text).findings
            if f.category == "health" and f.certain
        ]
        assert got == _expected_health(detector, row.text), row.text


# ----------------------------------------------------------------------------- internal


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("CONFIDENTIAL: Q3 roadmap draft", "internal"),
        ("Do not distribute outside the team", "internal"),
        ("How do I keep customer data confidential under GDPR?", "public"),
        ("The word 'confidential' comes from Latin", "public"),
        ("ssh deploy@build01.internal fails", "internal"),
        ("printer-3f.local stopped responding", "internal"),
        ("threading.local() keeps per-thread state", "public"),
        ("broker 10.0.3.17:1883 refuses connections", "internal"),
        ("ping 192.168.1.254 times out", "internal"),
        ("ping 8.8.8.8 works", "public"),
        ("Version 10.2.0.1 adds TLS 1.3", "public"),
        ("Range 192.168.0.0/16 is private; explain CIDR", "public"),
    ],
)
def test_internal_markers_and_hosts(
    detector: SensitivityDetector, text: str, expected: str
) -> None:
    """Markers and internal host names make a text internal; mentions and code do not."""
    assert level(detector, text) == expected


def test_configured_keywords_and_domains_make_text_internal() -> None:
    """Keywords and company domains from the configuration are internal markers/hosts."""
    default = SensitivityDetector()
    custom = SensitivityDetector(
        SensitivityConfig(internal_keywords=("project bluebird",), internal_domains=("acme.com",))
    )
    text = "Status of Project  Bluebird on wiki.acme.com?"
    assert default.classify(text).level is Level.PUBLIC
    verdict = custom.classify(text)
    assert verdict.level is Level.INTERNAL
    assert verdict.categories == ("internal_host", "internal_marker")
    # the default keywords are replaced, not extended
    assert custom.classify("CONFIDENTIAL").level is Level.PUBLIC


def test_extra_restricted_and_internal_patterns() -> None:
    """extra_*_patterns add categories at their level, found with Python re."""
    det = SensitivityDetector(
        SensitivityConfig(
            extra_restricted_patterns={"employee_id": r"EMP-[0-9]{6}\b"},
            extra_internal_patterns={"ticket": r"OPS-[0-9]+"},
        )
    )
    v = det.classify("OPS-12 concerns EMP-004211")
    assert v.level is Level.RESTRICTED
    assert v.categories == ("employee_id", "ticket")
    assert det.classify("OPS-12 only").level is Level.INTERNAL
    span = next(f for f in v.findings if f.category == "employee_id")
    assert "OPS-12 concerns EMP-004211"[span.start : span.end] == "EMP-004211"


def test_disabled_categories_are_not_reported() -> None:
    """A category in disabled_categories is never reported."""
    det = SensitivityDetector(SensitivityConfig(disabled_categories=frozenset({"street_address"})))
    assert det.classify("Ship to 221B Baker Street, London").level is Level.PUBLIC
    assert det.classify("mail jane.roe@posteo.de").level is Level.RESTRICTED


def test_stop_at_restricted_keeps_the_level_on_the_labelled_set() -> None:
    """stop_at_restricted gives every labelled text the same level, with fewer findings."""
    full = SensitivityDetector()
    fast = SensitivityDetector(SensitivityConfig(stop_at_restricted=True))
    fewer = 0
    for row in load():
        a, b = full.classify(row.text), fast.classify(row.text)
        assert a.level == b.level, row.text
        assert set(b.findings) <= set(a.findings)
        fewer += len(b.findings) < len(a.findings)
    assert fewer > 0


# ----------------------------------------------------------------------------- API


def test_findings_never_carry_the_matched_text(detector: SensitivityDetector) -> None:
    """Verdicts and findings hold categories and spans only: their repr shows no secret."""
    secret = "ghp_7Hq2Wm4Kx9Lp3Rv6Tz8Bn1Cd5Fg0Jh2Ks4Lm"
    text = f"token {secret} and card 4111 1111 1111 1111 for jane.roe@posteo.de"
    verdict = detector.classify(text)
    assert verdict.level is Level.RESTRICTED
    assert set(verdict.categories) == {"api_token", "payment_card", "email"}
    for shown in (repr(verdict), str(verdict), repr(verdict.findings)):
        assert secret not in shown
        assert "4111" not in shown
        assert "jane" not in shown
    assert {f.__slots__ for f in verdict.findings} == {
        ("category", "start", "end", "message", "certain")
    }
    spans = {f.category: text[f.start : f.end] for f in verdict.findings}
    assert spans == {
        "api_token": secret,
        "payment_card": "4111 1111 1111 1111",
        "email": "jane.roe@posteo.de",
    }


def test_spans_are_in_characters_for_non_ascii_text(detector: SensitivityDetector) -> None:
    """Spans index the str, not its UTF-8 bytes, also after multi-byte characters."""
    text = "Grüße aus München 🚀 — bitte an jürgen@example.de oder +49 151 23456789 schreiben"
    verdict = detector.classify(text)
    got = {f.category: text[f.start : f.end] for f in verdict.findings}
    assert got == {"email": "jürgen@example.de", "phone": "+49 151 23456789"}


def test_classify_messages_takes_the_maximum(detector: SensitivityDetector) -> None:
    """classify_messages returns the highest level and the findings of every message."""
    verdict = detector.classify_messages(
        ["You are a helpful assistant.", "CONFIDENTIAL: plan", "mail jane.roe@posteo.de"]
    )
    assert verdict.level is Level.RESTRICTED
    assert verdict.categories == ("email", "internal_marker")
    assert {(f.category, f.message) for f in verdict.findings} == {
        ("internal_marker", 1),
        ("email", 2),
    }
    assert detector.classify_messages([]).level is Level.PUBLIC
    assert detector.classify_messages(["hi", "CONFIDENTIAL"]).level is Level.INTERNAL


def test_level_label_and_parse() -> None:
    """Level has lower-case labels, parses them back and orders public < internal < restricted."""
    assert [lv.label for lv in Level] == ["public", "internal", "restricted"]
    assert Level.parse("internal") is Level.INTERNAL
    assert Level.parse(" Restricted ") is Level.RESTRICTED
    assert Level.PUBLIC < Level.INTERNAL < Level.RESTRICTED
    with pytest.raises(ValueError, match="unknown sensitivity level"):
        Level.parse("secret")


def test_verdict_categories_are_sorted_and_unique() -> None:
    """Verdict.categories is the sorted set of finding categories."""
    v = Verdict(
        Level.RESTRICTED,
        (Finding("phone", 0, 1), Finding("email", 2, 3), Finding("phone", 4, 5)),
    )
    assert v.categories == ("email", "phone")
    assert Verdict(Level.PUBLIC).categories == ()


def test_dfa_failure_falls_back_to_running_every_rule(
    detector: SensitivityDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the RE2 set reports no sentinel (DFA out of memory) every rule still runs."""

    class FailedSet:
        def Match(self, data: bytes) -> list[int]:  # RE2 spelling
            return []

    det = SensitivityDetector()
    monkeypatch.setattr(det, "_set", FailedSet())
    verdict = det.classify("mail jane.roe@posteo.de, card 4111 1111 1111 1111, CONFIDENTIAL")
    assert verdict.categories == ("email", "internal_marker", "payment_card")


def test_public_re2_api_gives_the_same_findings(
    detector: SensitivityDetector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without google-re2's internals (public finditer path) the findings are the same."""
    from edge_agent.routing.sensitivity import matching

    rows = load()[::7]
    fast = [detector.classify(r.text) for r in rows]
    monkeypatch.setattr(matching, "UNANCHORED", None)
    assert [detector.classify(r.text) for r in rows] == fast


def test_hostile_jwt_header_does_not_raise(detector: SensitivityDetector) -> None:
    """A JWT-shaped token whose header is deeply nested JSON is rejected, not a crash."""
    import base64

    header = base64.urlsafe_b64encode(b'{"alg":' + b"[" * 1500 + b"]" * 1500 + b"}")
    token = header.decode().rstrip("=") + ".eyJzdWIiOiIxIn0.c2lnbmF0dXJl"
    assert "jwt" not in detector.classify(token).categories


_alphabet = st.characters(blacklist_categories=())
_interesting = st.sampled_from(
    [
        "4111 1111 1111 1111",
        "jane@posteo.de",
        "+44 20 7946 0958",
        "my mother has diabetes",
        "CONFIDENTIAL",
        "10.0.0.1",
        JWT,
        "-----BEGIN PRIVATE KEY-----",
        "DE89 3704 0044 0532 0130 00",
        "ü",
        "\ud800",
        "\n\n",
        "password=",
    ]
)


@settings(max_examples=300)
@given(st.lists(st.one_of(st.text(_alphabet, max_size=40), _interesting), max_size=12))
def test_classify_never_raises_and_spans_lie_in_the_text(parts: list[str]) -> None:
    """For any text (lone surrogates included) classify returns spans within the text."""
    text = "".join(parts)
    verdict = _DETECTOR.classify(text)
    assert isinstance(verdict.level, Level)
    for f in verdict.findings:
        assert 0 <= f.start < f.end <= len(text)
        assert f.category in CATEGORY_LEVELS
    assert verdict.level == max(
        (CATEGORY_LEVELS[f.category] for f in verdict.findings), default=Level.PUBLIC
    )


_DETECTOR = SensitivityDetector()
