"""Smart eco: charge in the cheapest slots before departure, for all chargers on one fuse together.

Reading order: ``prices`` (slot values and file loaders), ``nordpool`` (Nord Pool's
day-ahead document read into those slots), ``price_api`` (the day-ahead HTTP client and
the feed that says when new prices arrive), ``tariff`` (grid energy and capacity charges),
``planner`` (the exact joint plan), ``schedule`` (what the balancer asks a plan), ``savings``
(a commuter's week with and without Smart eco), ``capacity`` (the live guard that keeps each hour
under the owner's capacity step), ``retail`` (Norgespris, strømstøtte: prices as households pay them),
``fallback`` (a second price source when the first fails).
"""
