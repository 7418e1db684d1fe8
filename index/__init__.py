"""datablame.index"""
