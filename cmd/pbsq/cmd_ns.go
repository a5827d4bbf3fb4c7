package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/pbsq/pbsq/datastore/name"
)

func (a *app) nsCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "ns", Short: "Create, list and remove namespaces"}
	var store, nsFlag string
	flags := func(c *cobra.Command) {
		c.Flags().StringVar(&store, "store", "", "datastore")
		c.Flags().StringVar(&nsFlag, "ns", "", "namespace (a/b/c; '' is the root)")
	}
	create := &cobra.Command{
		Use:   "create --store S --ns N",
		Short: "Create a namespace and its missing parents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := name.ParseNamespace(nsFlag)
			if err != nil {
				return err
			}
			if ns.IsRoot() {
				return usagef("--ns is required (the root namespace always exists)")
			}
			s, err := a.openStore(cmd.Context(), store, nil)
			if err != nil {
				return err
			}
			if err := s.CheckWritable(cmd.Context()); err != nil {
				return err
			}
			if err := s.CreateNamespace(cmd.Context(), ns); err != nil {
				return err
			}
			fmt.Printf("created namespace %q on %s\n", ns, store)
			return nil
		},
	}
	var depth int
	ls := &cobra.Command{
		Use:   "ls --store S [--ns N] [--max-depth D]",
		Short: "List namespaces below N (N included)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := name.ParseNamespace(nsFlag)
			if err != nil {
				return err
			}
			s, err := a.openStore(cmd.Context(), store, nil)
			if err != nil {
				return err
			}
			all, err := s.ListNamespaces(cmd.Context(), ns, depth)
			if err != nil {
				return err
			}
			for _, n := range all {
				if n.IsRoot() {
					fmt.Println("/ (root)")
				} else {
					fmt.Println(n)
				}
			}
			return nil
		},
	}
	ls.Flags().IntVar(&depth, "max-depth", -1, "levels below --ns to list (-1: all)")
	rm := &cobra.Command{
		Use:   "rm --store S --ns N",
		Short: "Remove an empty namespace",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ns, err := name.ParseNamespace(nsFlag)
			if err != nil {
				return err
			}
			s, err := a.openStore(cmd.Context(), store, nil)
			if err != nil {
				return err
			}
			if err := s.CheckWritable(cmd.Context()); err != nil {
				return err
			}
			if err := s.RemoveNamespaceLocked(cmd.Context(), ns); err != nil {
				return err
			}
			fmt.Printf("removed namespace %q from %s\n", ns, store)
			return nil
		},
	}
	for _, c := range []*cobra.Command{create, ls, rm} {
		flags(c)
	}
	cmd.AddCommand(create, ls, rm)
	return cmd
}
