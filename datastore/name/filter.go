package name

import (
	"fmt"
	"regexp"
	"strings"
)

// GroupFilter is one parsed group-filter.
type GroupFilter struct {
	Exclude bool
	Kind    string // group, type or regex
	Value   string
	Regex   *regexp.Regexp
}

// ParseGroupFilter parses `[exclude:](group:<type>/<id>|type:<t>|regex:<re>)`.
func ParseGroupFilter(s string) (GroupFilter, error) {
	var f GroupFilter
	rest := s
	if r, ok := strings.CutPrefix(rest, "exclude:"); ok {
		f.Exclude, rest = true, r
	}
	kind, val, ok := strings.Cut(rest, ":")
	if !ok || val == "" {
		return f, fmt.Errorf("%w group-filter %q: use group:<type>/<id>, type:<type> or regex:<re>, each optionally prefixed with \"exclude:\"", ErrInvalid, s)
	}
	f.Kind, f.Value = kind, val
	switch kind {
	case "group":
		if _, err := ParseGroup(Root, val); err != nil {
			return f, fmt.Errorf("group-filter %q: %w", s, err)
		}
	case "type":
		if _, err := ParseType(val); err != nil {
			return f, fmt.Errorf("group-filter %q: %w", s, err)
		}
	case "regex":
		if len(val) > 1024 {
			return f, fmt.Errorf("%w group-filter %q: regex too long", ErrInvalid, s)
		}
		re, err := regexp.Compile(val)
		if err != nil {
			return f, fmt.Errorf("%w group-filter %q: %v", ErrInvalid, s, err)
		}
		f.Regex = re
	default:
		return f, fmt.Errorf("%w group-filter %q: unknown kind %q (group, type, regex)", ErrInvalid, s, kind)
	}
	return f, nil
}

// Matches reports whether the filter's pattern matches group g ("vm/100").
func (f GroupFilter) Matches(g Group) bool {
	switch f.Kind {
	case "group":
		return g.String() == f.Value
	case "type":
		return string(g.Type) == f.Value
	case "regex":
		return f.Regex.MatchString(g.String())
	}
	return false
}

// ApplyFilters is PBS's rule: a group is included when there are no
// include filters or one matches, and no exclude filter matches.
func ApplyFilters(g Group, filters []GroupFilter) bool {
	included, haveInclude := false, false
	for _, f := range filters {
		if !f.Exclude {
			haveInclude = true
			included = included || f.Matches(g)
		}
	}
	if haveInclude && !included {
		return false
	}
	for _, f := range filters {
		if f.Exclude && f.Matches(g) {
			return false
		}
	}
	return true
}
