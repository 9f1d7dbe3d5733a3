"""Multi-reader multi-case (MRMC) statistics: `analysis` (the Obuchowski-Rockette analysis of reader x case
ratings, its variance components and CIs), `power` (power and cases needed from those components), `ratings_csv`
(the ratings' CSV), `report` (the one report the CLI and the round reports print), `round_reads` (a round's
realism reads as an MRMC design). No Django here."""
