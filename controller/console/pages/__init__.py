"""The console's pages, one module per section; ``controller.console.routes`` joins them."""
