"""A small, deterministic shop as an MCP server (the demo domain of tasks.yaml).

    python -m tracetune.servers.shop                       # stdio (how tasks.yaml runs it)
    python -m tracetune.servers.shop --transport streamable-http --port 8000

Catalogue, stock and past orders are fixed data in this module, so every run answers the
same. Stock never changes (so concurrent samples of one task see the same numbers); new
orders live in memory and get ids ORD-2001, ORD-2002, … in the order this process creates
them. Cancelling is idempotent, so two samples cancelling the same order read the same
answer. Descriptions are kept short on purpose: the tool schemas go into every prompt of a
small model with a small context."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError


@dataclass(frozen=True)
class Product:
    sku: str
    name: str
    price: float
    category: str
    description: str


PRODUCTS = {p.sku: p for p in [
    Product("KB-01", "Oak cutting board", 24.00, "kitchen", "Solid oak board, 40 x 25 cm."),
    Product("KB-02", "Chef's knife", 45.90, "kitchen", "20 cm stainless steel blade."),
    Product("KB-03", "Steel kettle", 32.00, "kitchen", "1.7 litre stovetop kettle."),
    Product("KB-04", "Ceramic teapot", 28.50, "kitchen", "Holds 6 cups, dishwasher safe."),
    Product("GD-01", "Garden hose", 19.99, "garden", "20 m hose with spray nozzle."),
    Product("GD-02", "Pruning shears", 15.75, "garden", "Bypass shears for branches up to 2 cm."),
    Product("GD-03", "Watering can", 11.20, "garden", "Galvanised steel, 5 litres."),
    Product("GD-04", "Seed starter kit", 9.95, "garden", "24 peat pots with a clear lid."),
    Product("HM-01", "Wool blanket", 59.00, "home", "Merino wool, 150 x 200 cm."),
    Product("HM-02", "Desk lamp", 34.99, "home", "LED lamp with three brightness levels."),
    Product("HM-03", "Scented candle", 8.50, "home", "Lavender, burns for 40 hours."),
    Product("HM-04", "Wall clock", 27.00, "home", "Silent sweep, 30 cm across."),
    Product("OT-01", "Camping lantern", 22.40, "outdoor", "Rechargeable, 300 lumens."),
    Product("OT-02", "Picnic blanket", 18.00, "outdoor", "Waterproof back, 140 x 170 cm."),
    Product("OT-03", "Water bottle", 14.25, "outdoor", "1 litre, keeps drinks cold 24 hours."),
]}

WAREHOUSES = ("Leeds", "Bristol", "Glasgow")

STOCK = {  # sku -> units per warehouse, in WAREHOUSES order
    "KB-01": (8, 3, 0), "KB-02": (5, 0, 2), "KB-03": (12, 0, 5), "KB-04": (0, 0, 0),
    "GD-01": (20, 14, 6), "GD-02": (0, 7, 3), "GD-03": (9, 9, 9), "GD-04": (30, 0, 12),
    "HM-01": (2, 1, 0), "HM-02": (0, 4, 6), "HM-03": (40, 25, 18), "HM-04": (3, 0, 0),
    "OT-01": (6, 11, 0), "OT-02": (0, 0, 7), "OT-03": (15, 22, 9),
}

EU = {"austria", "belgium", "denmark", "france", "germany", "ireland", "italy", "netherlands",
      "poland", "portugal", "spain", "sweden"}
UK = {"uk", "united kingdom", "england", "scotland", "wales", "great britain", "gb"}


@dataclass
class Order:
    order_id: str
    sku: str
    quantity: int
    status: str  # processing | shipped | delivered | cancelled
    note: str = ""

    @property
    def total(self) -> float:
        return round(PRODUCTS[self.sku].price * self.quantity, 2)


def _past_orders() -> dict[str, Order]:
    return {o.order_id: o for o in [
        Order("ORD-1001", "HM-02", 1, "shipped", "shipped 3 June, arriving 5 June"),
        Order("ORD-1002", "HM-03", 2, "processing"),
        Order("ORD-1003", "HM-01", 1, "delivered", "delivered 28 May"),
        Order("ORD-1004", "GD-03", 3, "processing"),
        Order("ORD-1005", "KB-02", 1, "cancelled", "refunded 30 May"),
        Order("ORD-1006", "OT-01", 1, "processing"),
        Order("ORD-1007", "KB-03", 2, "shipped", "shipped 4 June, arriving 6 June"),
        Order("ORD-1008", "OT-02", 1, "processing"),
        Order("ORD-1009", "GD-01", 1, "delivered", "delivered 1 June"),
    ]}


ORDERS = _past_orders()
_next_order_number = 2001


def money(amount: float) -> str:
    return f"${amount:.2f}"


def find_product(sku: str) -> Product:
    """A SKU, or (forgivingly) a product's exact name."""
    key = sku.strip().upper()
    if key in PRODUCTS:
        return PRODUCTS[key]
    for product in PRODUCTS.values():
        if product.name.lower() == sku.strip().lower():
            return product
    raise ToolError(f"Unknown SKU {sku!r}. Use search_products to find a SKU.")


def find_order(order_id: str) -> Order:
    key = order_id.strip().upper()
    if key.isdigit():
        key = f"ORD-{key}"
    if key not in ORDERS:
        raise ToolError(f"No order {order_id!r}.")
    return ORDERS[key]


def _line(product: Product) -> str:
    return f"{product.sku} {product.name} - {money(product.price)}"


def _plural_stem(word: str) -> str:
    return word[:-1] if word.endswith("s") and len(word) > 3 else word


mcp = MCPServer("shop", instructions="A home and garden shop: catalogue, stock, orders, shipping.",
                log_level="WARNING")


@mcp.tool(structured_output=False)
def search_products(query: str) -> str:
    """Search the catalogue by words or category. Returns SKU, name and price."""
    words = [_plural_stem(w) for w in query.lower().replace("'", "").split()]
    words = [w for w in words if w not in {"a", "an", "the", "for", "of"}]
    hits = [
        p for p in PRODUCTS.values()
        if words and all(w in f"{p.name} {p.category}".lower().replace("'", "") for w in words)
    ]
    if not hits:
        return f"No products match {query!r}."
    return "\n".join(_line(p) for p in hits)


@mcp.tool(structured_output=False)
def get_product(sku: str) -> str:
    """Details and price of one product."""
    p = find_product(sku)
    return f"{_line(p)}. {p.description} Category: {p.category}."


@mcp.tool(structured_output=False)
def check_stock(sku: str) -> str:
    """Units in stock per warehouse."""
    p = find_product(sku)
    units = STOCK[p.sku]
    per_warehouse = ", ".join(f"{w} {n}" for w, n in zip(WAREHOUSES, units))
    return f"{p.sku} {p.name}: {per_warehouse} (total {sum(units)})."


@mcp.tool(structured_output=False)
def shipping_quote(country: str, sku: str, quantity: int = 1) -> str:
    """Shipping cost and delivery time of a product to a country."""
    # The destination comes first and has no default: small models drop trailing optional arguments.
    p = find_product(sku)
    if quantity < 1:
        raise ToolError("quantity must be at least 1.")
    goods = round(p.price * quantity, 2)
    where = country.strip().lower()
    if where in UK:
        cost, days = (0.0 if goods >= 50 else 4.95), "2-3 days"
    elif where in EU:
        cost, days = 12.00, "4-6 days"
    else:
        cost, days = 25.00, "7-10 days"
    shipping = "free" if cost == 0 else money(cost)
    return f"{quantity} x {p.name} to {country.strip()}: shipping {shipping}, {days}. Goods {money(goods)}."


@mcp.tool(structured_output=False)
def create_order(sku: str, quantity: int = 1) -> str:
    """Place an order for a product."""
    global _next_order_number
    p = find_product(sku)
    available = sum(STOCK[p.sku])
    if quantity < 1:
        raise ToolError("quantity must be at least 1.")
    if quantity > available:
        raise ToolError(f"Only {available} x {p.name} in stock; order not placed.")
    order = Order(f"ORD-{_next_order_number}", p.sku, quantity, "processing")
    _next_order_number += 1
    ORDERS[order.order_id] = order
    return f"Order {order.order_id} placed: {quantity} x {p.name}, total {money(order.total)}. Status: processing."


@mcp.tool(structured_output=False)
def get_order(order_id: str) -> str:
    """Status and contents of an order."""
    o = find_order(order_id)
    note = f" ({o.note})" if o.note else ""
    return f"{o.order_id}: {o.quantity} x {PRODUCTS[o.sku].name}, total {money(o.total)}. Status: {o.status}{note}."


@mcp.tool(structured_output=False)
def cancel_order(order_id: str) -> str:
    """Cancel an order that has not shipped yet."""
    o = find_order(order_id)
    if o.status in ("shipped", "delivered"):
        raise ToolError(f"{o.order_id} is already {o.status} and cannot be cancelled; a return is possible instead.")
    o.status = "cancelled"
    return f"{o.order_id} is cancelled. Refund of {money(o.total)} to the original payment."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    if args.transport == "stdio":
        mcp.run()
    else:
        mcp.run("streamable-http", host=args.host, port=args.port)


if __name__ == "__main__":
    main()
