package main

func main() { println("format 1") }
