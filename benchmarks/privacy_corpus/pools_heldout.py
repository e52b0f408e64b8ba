"""The HELD-OUT part's names and places (disjoint from :data:`.pools.TUNING`)."""

from __future__ import annotations

from benchmarks.privacy_corpus.pools import Pool

HELDOUT = Pool(
    first={
        "en": ("Margaret", "Declan", "Imogen", "Rupert", "Niamh", "Callum", "Harriet", "Esme"),
        "de": ("Wolfgang", "Annelie", "Henrik", "Mareike", "Jannik", "Friederike", "Ole", "Ute"),
        "fr": ("Gaspard", "Solène", "Baptiste", "Maëlle", "Corentin", "Anaïs", "Éloïse", "Rémi"),
        "es": ("Íñigo", "Ainhoa", "Rodrigo", "Nerea", "Gonzalo", "Itziar", "Sergio", "Rocío"),
        "nl": ("Sjoerd", "Anouk", "Wouter", "Marieke", "Gijs", "Ilse", "Maarten", "Noor"),
    },
    last={
        "en": ("Fairbrother", "Quigley", "Blackwood", "Lockhart", "Mayhew", "Sinclair"),
        "de": ("Oberländer", "Weißgerber", "Kowalczyk", "Rautenberg", "Pfeiffer", "Zimmermann"),
        "fr": ("Duval", "Lacroix", "Marchand", "Benoît", "Carpentier", "Delacroix"),
        "es": ("Etxeberria", "Villanueva", "Quintana", "Aguirre", "Salcedo", "Iglesias"),
        "nl": ("Hoekstra", "van der Meulen", "Kuipers", "Brouwer", "Veenstra", "Smit"),
    },
    streets={
        "DE": ("Schillerweg", "Kastanienallee", "Zum Anger", "Bahnhofstraße"),
        "FR": ("impasse des Tilleuls", "rue Victor Hugo", "chemin du Moulin", "allée des Pins"),
        "ES": ("Calle de Alcalá", "Rúa do Vilar", "Carrer de Balmes", "Avenida de América"),
        "NL": ("Prinsengracht", "Oudegracht", "Lange Voorhout", "Zuiderstraat"),
        "IT": ("Via Nazionale", "Viale Mazzini", "Via Cavour", "Piazza delle Erbe"),
        "AT": ("Herrengasse", "Ringstraße Süd"),
        "PL": ("ul. Polna", "al. Jerozolimskie"),
        "BE": ("Chaussée de Wavre", "Meir"),
        "PT": ("Rua de Santa Catarina", "Travessa do Carmo"),
        "CH": ("Bahnhofstrasse", "Rue du Rhône"),
        "SE": ("Drottninggatan", "Storgatan"),
    },
    cities={
        "DE": (("Würzburg", "97999"), ("Kiel", "24999"), ("Regensburg", "93999")),
        "FR": (("Nantes", "44999"), ("Strasbourg", "67999"), ("Bordeaux", "33999")),
        "ES": (("Bilbao", "48999"), ("Sevilla", "41999"), ("Salamanca", "37999")),
        "NL": (("Leiden", "2399AA"), ("Eindhoven", "5699AA"), ("Zwolle", "8099AA")),
        "IT": (("Napoli", "80199"), ("Verona", "37199")),
        "AT": (("Innsbruck", "6099"),),
        "PL": (("Gdańsk", "80-999"),),
        "BE": (("Antwerpen", "2099"),),
        "PT": (("Coimbra", "3099-999"),),
        "CH": (("Lausanne", "1099"),),
        "SE": (("Uppsala", "759 99"),),
    },
)
