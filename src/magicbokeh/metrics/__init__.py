"""Image and depth quality metrics, shared by training losses and evaluation.

One module per metric family; import the module you need (nothing is re-exported here, so
importing one metric never loads another's dependencies).
"""
