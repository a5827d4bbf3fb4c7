package confine

import (
	"errors"
	"fmt"
	"os"
	"slices"

	"golang.org/x/sys/unix"
)

// ErrNotOwner: pbsq runs as a user that cannot give what it creates to the
// tree's owner.
var ErrNotOwner = errors.New("cannot create files owned by the datastore's owner")

// Owner is who files created in a tree must belong to: the owner of its
// root directory. Chown is false when what pbsq creates already belongs
// to them.
type Owner struct {
	UID, GID int
	Chown    bool
}

// Apply gives fd, which the caller has just created, to the owner. Only
// descriptors of files or directories created by this process are passed
// here: an existing file is never chowned.
func (o Owner) Apply(fd int) error {
	if !o.Chown {
		return nil
	}
	return unix.Fchown(fd, o.UID, o.GID)
}

// OwnerOf decides the owner of what pbsq creates below r. As root, that
// is whoever owns r's directory. As another user, it must be that owner
// already (and a member of its group, when the group differs): otherwise
// files would end up half owned by the wrong user, so it is refused here,
// before anything is written.
func OwnerOf(r *Root) (Owner, error) {
	st, err := r.Stat("")
	if err != nil {
		return Owner{}, err
	}
	return decideOwner(os.Geteuid(), os.Getegid(), os.Getgroups, r.path, st.Uid, st.Gid)
}

func decideOwner(euid, egid int, groups func() ([]int, error), path string, uid, gid uint32) (Owner, error) {
	o := Owner{UID: int(uid), GID: int(gid), Chown: int(uid) != euid || int(gid) != egid}
	if euid == 0 || !o.Chown {
		return o, nil
	}
	if int(uid) != euid {
		return Owner{}, fmt.Errorf("%s belongs to uid %d; pbsq runs as uid %d and %w: run it as uid %d (or as root)",
			path, uid, euid, ErrNotOwner, uid)
	}
	gs, err := groups()
	if err != nil || !slices.Contains(gs, int(gid)) {
		return Owner{}, fmt.Errorf("%s belongs to group %d; pbsq runs as uid %d, not a member of it, and %w",
			path, gid, euid, ErrNotOwner)
	}
	return o, nil
}
