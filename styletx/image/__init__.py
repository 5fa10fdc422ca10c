"""Image helpers plugins may use: quality metrics and preview grids."""
