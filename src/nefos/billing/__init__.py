"""Billing: metering → rating → ledger → invoices.

* ``money``: currencies, their minor units, rounding (half-up, once, at the line).
* ``catalogue``: the price list (``Product`` rows), versioned in time.
* ``metering``: every VM, container and volume's time in each billable state,
  recorded from its lifecycle (``UsageRecord``), cut at each hour.
* ``rating``: usage quantities times the prices in force, plus reseller margins.
* ``ledger``: wallets and their append-only ledger; the one place balances move.
* ``engine``: the periodic pass that cuts usage, charges wallets, warns on a low
  balance and stops the instances of an organisation left without funds.

Amounts are ``Decimal`` end to end: ``Amount`` columns in the database, strings on
the wire (``money.money_str``).
"""
