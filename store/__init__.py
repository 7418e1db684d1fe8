"""datablame.store"""
