"""Sites: which clinic's data a user may see, and the one way every query is narrowed to it.

A batch belongs to a site; patients and lesions too. A user belongs to sites through memberships,
each with a role (`Role`). `users.role == admin` is the deployment-wide admin: every site, and the
sites themselves. Everyone else sees exactly the sites of their memberships, read from the database at
each request, so removing a member takes effect at once, for their sessions and API tokens alike.

`visible_site_ids` answers None for "every site" (the global admin) or a frozenset of ids; the helpers
below take that value and give the SQL condition or the row, so a page never writes its own scoping.
A row of a site the user cannot see is looked up as if it did not exist: callers answer 404.
"""
from __future__ import annotations

from sqlalchemy import false, select, true

from .ids import parse_id
from .schema import Analysis, AuditEvent, Batch, Image, Role, Site, SiteMembership, User

DEFAULT_SITE_NAME = "Default site"
Sites = frozenset[int] | None  # None: every site


class SiteError(ValueError):
    """A request about sites that cannot be honoured; the message says why."""


# --- who sees what -------------------------------------------------------------------------------

def is_global_admin(user) -> bool:
    return user.role == Role.ADMIN


def memberships(session, user_id: int) -> dict[int, str]:
    """{site id: role} of a user's memberships at active sites."""
    rows = session.execute(select(SiteMembership.site_id, SiteMembership.role)
                           .join(Site, Site.id == SiteMembership.site_id)
                           .where(SiteMembership.user_id == user_id, Site.active.is_(True)))
    return dict(rows.all())


def visible_site_ids(session, user, at_least: str = Role.UPLOADER) -> Sites:
    """The sites whose data `user` may see with at least the role `at_least`; None means every site."""
    if is_global_admin(user):
        return None
    return frozenset(site for site, role in memberships(session, user.id).items() if Role.includes(role, at_least))


# --- conditions and lookups ----------------------------------------------------------------------

def in_sites(column, sites: Sites):
    """`column IN sites`, or true for every site; an empty set matches nothing (no SQL `IN ()`)."""
    if sites is None:
        return true()
    return column.in_(sorted(sites)) if sites else false()


def visible_batch_ids(sites: Sites):
    """A subquery of the ids of the batches at `sites`: for tables that point at a batch."""
    return select(Batch.id).where(in_sites(Batch.site_id, sites))


def batch_in(session, batch_id: int, sites: Sites) -> Batch | None:
    batch = session.get(Batch, batch_id)
    return batch if batch is not None and (sites is None or batch.site_id in sites) else None


def image_in(session, image_id: int, sites: Sites) -> Image | None:
    image = session.get(Image, image_id)
    return image if image is not None and batch_in(session, image.batch_id, sites) is not None else None


def analysis_in(session, analysis_id: int, sites: Sites) -> Analysis | None:
    analysis = session.get(Analysis, analysis_id)
    return analysis if analysis is not None and image_in(session, analysis.image_id, sites) is not None else None


def site_of_batch(session, batch_id: int) -> int | None:
    return session.scalar(select(Batch.site_id).where(Batch.id == batch_id))


def audit_in(sites: Sites):
    """The audit events of `sites`; events of no site (sign-ins, settings) only for every site."""
    return in_sites(AuditEvent.site_id, sites)


# --- choosing a site -----------------------------------------------------------------------------

def upload_site(session, user, asked) -> int:
    """The site a new batch goes to: the one asked for (`asked`: a form field, query parameter or JSON
    value, text or number; None or empty for none), if the user may upload there, else the user's only
    site. Raises SiteError (a 400) when the user has several and named none, or named one that is not
    theirs: a site the user cannot see is refused like one that does not exist."""
    wanted = parse_id(str(asked)) if asked not in (None, "") else None
    if asked not in (None, "") and wanted is None:
        raise SiteError(f"No site {asked!r} of yours.")
    sites = visible_site_ids(session, user)
    if sites is None:
        sites = frozenset(session.scalars(select(Site.id).where(Site.active.is_(True))))
    if wanted is not None:
        if wanted not in sites:
            raise SiteError(f"No site {wanted} of yours.")
        return wanted
    if len(sites) == 1:
        return next(iter(sites))
    if not sites:
        raise SiteError("You belong to no site: ask an admin to add you to one.")
    raise SiteError("You belong to several sites: choose one (form field or query parameter `site`, "
                    f"one of {', '.join(str(s) for s in sorted(sites))}).")


def site_choices(session, user) -> list[tuple[int, str]]:
    """(id, name) of the active sites the user may upload to, by name."""
    query = select(Site.id, Site.name).where(Site.active.is_(True)).order_by(Site.name)
    sites = visible_site_ids(session, user)
    if sites is not None:
        query = query.where(in_sites(Site.id, sites))
    return [tuple(row) for row in session.execute(query).all()]


# --- managing sites and members ------------------------------------------------------------------

def create_site(session, name: str) -> Site:
    name = " ".join(name.split())[:100]
    if not name:
        raise SiteError("A site needs a name.")
    if session.scalar(select(Site.id).where(Site.name == name)) is not None:
        raise SiteError(f"The site {name!r} exists already.")
    site = Site(name=name, active=True)
    session.add(site)
    session.flush()
    return site


def site_named(session, name_or_id: str) -> Site | None:
    """A site by its name or its number (for the command line)."""
    site = session.scalar(select(Site).where(Site.name == name_or_id.strip()))
    if site is None and name_or_id.strip().isdigit():
        site = session.get(Site, int(name_or_id))
    return site


def set_membership(session, user_id: int, site_id: int, role: str) -> tuple[str | None, str]:
    """Put a user at a site with `role` (or change their role there); returns (role before, role now)."""
    if role not in Role.ALL:
        raise SiteError(f"Unknown role {role!r}; choose one of {', '.join(Role.ALL)}.")
    row = session.scalar(select(SiteMembership).where(SiteMembership.user_id == user_id,
                                                      SiteMembership.site_id == site_id))
    before = row.role if row else None
    if row is None:
        session.add(SiteMembership(user_id=user_id, site_id=site_id, role=role))
    else:
        row.role = role
    session.flush()
    return before, role


def remove_membership(session, user_id: int, site_id: int) -> bool:
    row = session.scalar(select(SiteMembership).where(SiteMembership.user_id == user_id,
                                                      SiteMembership.site_id == site_id))
    if row is None:
        return False
    session.delete(row)
    session.flush()
    return True


def only_site(session) -> int | None:
    """The deployment's site when it has exactly one: where a user made without naming one goes."""
    ids = session.scalars(select(Site.id).order_by(Site.id).limit(2)).all()
    return ids[0] if len(ids) == 1 else None


def users_at(session, sites: Sites) -> list[User]:
    """The users with a membership at `sites` (every user for every site), by name."""
    query = select(User).order_by(User.username)
    if sites is not None:
        query = query.where(User.id.in_(select(SiteMembership.user_id).where(in_sites(SiteMembership.site_id, sites))))
    return list(session.scalars(query))


def members_by_user(session, user_ids: list[int]) -> dict[int, dict[int, str]]:
    """{user id: {site id: role}} for these users."""
    found: dict[int, dict[int, str]] = {}
    if user_ids:
        for user_id, site_id, role in session.execute(
                select(SiteMembership.user_id, SiteMembership.site_id, SiteMembership.role)
                .where(SiteMembership.user_id.in_(user_ids))):
            found.setdefault(user_id, {})[site_id] = role
    return found
