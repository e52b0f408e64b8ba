"""Value pools, one per part, disjoint: a held-out row never reuses a tuning name or place.

Each pool has first and last names per language, and streets and cities (with a postcode
shape) per country. The corpus test checks that no entry is in both pools.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Pool:
    """Names and places for one part."""

    first: dict[str, tuple[str, ...]]
    last: dict[str, tuple[str, ...]]
    streets: dict[str, tuple[str, ...]]
    cities: dict[str, tuple[tuple[str, str], ...]]
    """Per country: (city, postcode shape); in the shape ``9`` is a digit and ``A`` a letter."""

    def entries(self) -> set[str]:
        """Every name, street and city in the pool (for the disjointness check)."""
        out: set[str] = set()
        for group in (self.first, self.last, self.streets):
            for values in group.values():
                out.update(values)
        for cities in self.cities.values():
            out.update(c for c, _ in cities)
        return out


TUNING = Pool(
    first={
        "en": ("Oliver", "Emily", "Harry", "Charlotte", "Jack", "Amelia", "Thomas", "Grace"),
        "de": ("Lukas", "Hannah", "Jonas", "Lea", "Felix", "Marie", "Tobias", "Sophie"),
        "fr": ("Julien", "Camille", "Mathieu", "Chloé", "Antoine", "Manon", "Hugo", "Léa"),
        "es": ("Javier", "Lucía", "Alejandro", "Carmen", "Pablo", "Marta", "Diego", "Elena"),
        "nl": ("Daan", "Sanne", "Bram", "Fleur", "Joris", "Lotte", "Thijs", "Femke"),
    },
    last={
        "en": ("Whitfield", "Harrington", "Pembroke", "Ashworth", "Caldwell", "Thornbury"),
        "de": ("Hoffmann", "Schäfer", "Krüger", "Brandt", "Vogel", "Lehmann"),
        "fr": ("Lefèvre", "Moreau", "Girard", "Rousseau", "Fontaine", "Chevalier"),
        "es": ("Fernández", "Moreno", "Navarro", "Serrano", "Castillo", "Ortega"),
        "nl": ("van Dijk", "Bakker", "Visser", "de Boer", "Mulder", "Dekker"),
    },
    streets={
        "DE": ("Lindenstraße", "Goethestraße", "Am Mühlbach", "Hauptstraße"),
        "FR": ("rue des Lilas", "avenue Jean Jaurès", "boulevard Voltaire", "rue Pasteur"),
        "ES": (
            "Calle Mayor",
            "Avenida de la Constitución",
            "Calle del Olmo",
            "Paseo del Prado Bajo",
        ),
        "NL": ("Keizersgracht", "Dorpsstraat", "Molenweg", "Kerkstraat"),
        "IT": ("Via Garibaldi", "Via Roma", "Corso Vittorio Emanuele", "Via dei Mille"),
        "AT": ("Mariahilfer Gasse", "Landstraßer Hauptstraße"),
        "PL": ("ul. Długa", "ul. Kwiatowa"),
        "BE": ("Rue de la Loi", "Kerkhofstraat"),
        "PT": ("Rua Augusta", "Avenida da Liberdade"),
    },
    cities={
        "DE": (("Leipzig", "04999"), ("Freiburg im Breisgau", "79999"), ("Bremen", "28999")),
        "FR": (("Lyon", "69009"), ("Rennes", "35999"), ("Montpellier", "34999")),
        "ES": (("Valencia", "46999"), ("Zaragoza", "50999"), ("Granada", "18999")),
        "NL": (("Utrecht", "3599AA"), ("Groningen", "9799AA"), ("Haarlem", "2099AA")),
        "IT": (("Bologna", "40199"), ("Torino", "10199")),
        "AT": (("Graz", "8099"),),
        "PL": (("Kraków", "31-999"),),
        "BE": (("Gent", "9099"),),
        "PT": (("Porto", "4099-999"),),
    },
)


def pool(part: str) -> Pool:
    """The pool of ``part`` (the held-out pool lives in its own module, like its templates)."""
    if part == "tuning":
        return TUNING
    from benchmarks.privacy_corpus.pools_heldout import HELDOUT

    return HELDOUT
